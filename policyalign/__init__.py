"""policyalign: versioned safety-policy packs and a trainer that aligns an LLM to them."""

__version__ = "0.1.0"

"""A loopback stand-in for the Hugging Face Hub, so tests drive the real `huggingface_hub` client.

Two servers, one set of git repositories (`ROOT/models/ORG/NAME`, `ROOT/datasets/ORG/NAME`):

* **olah** (a real Hub mirror, run as a subprocess in offline mode with ROOT as its
  `mirrors-path`) serves the read API from those repositories: repo info at a revision, refs,
  trees, `resolve` (HEAD and GET, git-LFS pointers included).
* **`HubServer`** (this module) is the endpoint the client is pointed at (`HF_ENDPOINT`). It
  implements what olah lacks, i.e. the write and listing endpoints huggingface_hub calls, by
  running the git CLI on the same repositories: `whoami-v2`, `validate-yaml`, `repos/create`,
  `preupload`, the git-LFS batch/upload/verify protocol, the NDJSON `commit`, `tag`, and the
  model/dataset listing by tag. Everything else is forwarded to olah.

olah quirks this server papers over (found by running it): repo info without a revision
(`/api/models/ORG/NAME`) is a 404 in offline mode, so it is rewritten to `revision/main`; a
tree listing without a trailing path (`tree/REV?recursive=true`) is a 307 to `tree/REV/`, so
the slash is added before forwarding; olah reports `tags: []` and `private: false` for every
local repository, so listings are answered here from the card metadata instead.

Both servers bind 127.0.0.1 on ephemeral ports; `HubServer.stop()` shuts both down.
The server knows two tokens: its owner's (`token`, which every repository belongs to) and
`other_token`, a real user's who owns nothing. Any other token is invalid, and huggingface.co
answers every request carrying one, a public repository's read included, with 401 "Invalid
credentials in Authorization header" (which the client raises as a plain 401, not as
RepositoryNotFound); so does this server. Writes need the owner's token (401 without a token, with
that message; 403 with `other_token`, as the Hub answers a token without write access). Reads of
a public repository are open to anyone with no token or a known one; a private repository is read
only with the owner's token, and anyone else gets what huggingface.co answers for one: the not-found answer of a missing repository (401 with `X-Error-Code:
RepoNotFound` without a token, 404 with another user's), so the client raises
`RepositoryNotFoundError` and cannot tell private from absent. A gated repository (created with
`gated=True`) is read only with the owner's token too, and anyone else gets huggingface.co's
answers for one not granted access: 401 with `X-Error-Code: GatedRepo` without a token, 403 with
one, which the client raises as `GatedRepoError`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIX = {"model": "", "dataset": "datasets/"}
USER = "pa-tester"
# A valid token of another user of the Hub, who owns no repository here.
OTHER_TOKEN = "hf_anotherUserOfThisHub7sK2pQ9"
OTHER_USER = "another-user"
INVALID_TOKEN = "Invalid credentials in Authorization header"  # huggingface.co's words, which huggingface_hub reads
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
POINTER_RE = re.compile(r"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n$")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.zip", "*.tar.gz", "*.parquet", "*.arrow", "*.npy",
))
REGULAR_MAX_BYTES = 5 * 1024 * 1024
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization",
               "proxy-authenticate", "trailer", "host", "content-length"}
GIT_ENV = {"GIT_AUTHOR_NAME": USER, "GIT_AUTHOR_EMAIL": f"{USER}@example.invalid",
           "GIT_COMMITTER_NAME": USER, "GIT_COMMITTER_EMAIL": f"{USER}@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


class HubHTTPError(Exception):
    """An error answer in the Hub's format (JSON body plus X-Error-Code / X-Error-Message)."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


# --------------------------------------------------------------------------- git store


class GitStore:
    """The repositories on disk, written only through the git CLI (one writer at a time)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lfs_store = root / "_lfs_uploads"
        self.lfs_store.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # -- plumbing

    def path(self, repo_type: str, repo_id: str) -> Path:
        org, name = repo_id.split("/", 1)
        return self.root / f"{repo_type}s" / org / name

    def git(self, repo: Path, *args: str, data: bytes | None = None, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True,
                                env={**os.environ, **GIT_ENV, **(env or {})}, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode().strip()

    def rev(self, repo: Path, revision: str) -> str | None:
        try:
            return self.git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
        except RuntimeError:
            return None

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.path(repo_type, repo_id) / ".git").is_dir()

    def repo(self, repo_type: str, repo_id: str) -> Path:
        if not self.exists(repo_type, repo_id):
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        return self.path(repo_type, repo_id)

    def meta(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        file = self.path(repo_type, repo_id) / ".git" / "hubserver.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def read(self, repo: Path, revision: str, path: str) -> bytes | None:
        commit = self.rev(repo, revision)
        if commit is None:
            return None
        result = subprocess.run(["git", "-C", str(repo), "cat-file", "blob", f"{commit}:{path}"],
                                capture_output=True, check=False)
        return result.stdout if result.returncode == 0 else None

    def files(self, repo: Path, revision: str) -> dict[str, str]:
        """path -> blob sha of every file at `revision`."""
        out = self.git(repo, "ls-tree", "-r", "--full-tree", revision)
        entries = {}
        for line in out.splitlines():
            meta, path = line.split("\t", 1)
            entries[path] = meta.split()[2]
        return entries

    # -- writes

    def create(self, repo_type: str, repo_id: str, private: bool, gated: bool = False) -> bool:
        """Create a repo with the Hub's initial commit (a .gitattributes); False if it exists. A `gated` one
        is read only by its owner, as if no one else had been granted access (see `require_read`)."""
        with self.lock:
            if self.exists(repo_type, repo_id):
                return False
            path = self.path(repo_type, repo_id)
            path.mkdir(parents=True, exist_ok=True)
            self.git(path, "init", "-q", "-b", "main")
            (path / ".git" / "hubserver.json").write_text(json.dumps({"private": private, "gated": gated}))
            self.commit(repo_type, repo_id, "main", {".gitattributes": GITATTRIBUTES.encode()}, [], "initial commit")
            return True

    def commit(self, repo_type: str, repo_id: str, branch: str, files: dict[str, bytes], deletes: list[str],
               message: str, parent: str | None = None) -> str:
        """One commit on `branch`: add/replace `files`, remove `deletes` (a trailing '/' removes a folder)."""
        repo = self.repo(repo_type, repo_id)
        with self.lock:
            head = self.rev(repo, f"refs/heads/{branch}")
            if head is None and self.rev(repo, "HEAD") is not None:
                raise HubHTTPError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent is not None and (head is None or not head.startswith(parent)):
                raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
            index = repo / ".git" / f"hubserver-index-{threading.get_ident()}"
            env = {"GIT_INDEX_FILE": str(index)}
            try:
                self.git(repo, "read-tree", *([head] if head else ["--empty"]), env=env)
                existing = self.files(repo, head) if head else {}
                for path in deletes:
                    gone = [p for p in existing if p == path or (path.endswith("/") and p.startswith(path))]
                    if not gone:
                        raise HubHTTPError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    self.git(repo, "update-index", "--force-remove", "--", *gone, env=env)
                lines = [f"100644 {self.git(repo, 'hash-object', '-w', '--stdin', data=data)}\t{path}"
                         for path, data in files.items()]
                if lines:
                    self.git(repo, "update-index", "--add", "--index-info", data=("\n".join(lines) + "\n").encode(), env=env)
                tree = self.git(repo, "write-tree", env=env)
            finally:
                index.unlink(missing_ok=True)
            return self._advance(repo, branch, head, tree, message)

    def commit_tree(self, repo_type: str, repo_id: str, tree: dict[str, Any], message: str, branch: str = "main") -> str:
        """Replace the whole tree with a nested dict {name: bytes | dict}, names taken verbatim.

        Test helper for hostile repositories: `git mktree` accepts names such as '..' that the
        commit endpoint (like the real Hub) refuses, so a malicious repo can be built here.
        """
        repo = self.repo(repo_type, repo_id)
        with self.lock:
            head = self.rev(repo, f"refs/heads/{branch}")
            return self._advance(repo, branch, head, self._mktree(repo, tree), message)

    def _mktree(self, repo: Path, tree: dict[str, Any]) -> str:
        lines = []
        for name, value in tree.items():
            if isinstance(value, dict):
                lines.append(f"040000 tree {self._mktree(repo, value)}\t{name}")
            else:
                lines.append(f"100644 blob {self.git(repo, 'hash-object', '-w', '--stdin', data=value)}\t{name}")
        return self.git(repo, "mktree", data=("\n".join(lines) + "\n").encode())

    def _advance(self, repo: Path, branch: str, head: str | None, tree: str, message: str) -> str:
        commit = self.git(repo, "commit-tree", tree, *(["-p", head] if head else []), "-m", message)
        self.git(repo, "update-ref", f"refs/heads/{branch}", commit, *([head] if head else []))
        return commit

    def tag(self, repo_type: str, repo_id: str, revision: str, tag: str, message: str | None) -> None:
        repo = self.repo(repo_type, repo_id)
        with self.lock:
            commit = self.rev(repo, revision)
            if commit is None:
                raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            if subprocess.run(["git", "check-ref-format", f"refs/tags/{tag}"], check=False).returncode != 0:
                raise HubHTTPError(400, f"Invalid tag name: {tag}")
            if self.rev(repo, f"refs/tags/{tag}") is not None:
                raise HubHTTPError(409, f"Tag {tag} already exists")
            self.git(repo, "tag", *(["-a", "-m", message] if message else []), tag, commit)

    def store_lfs(self, oid: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubHTTPError(400, "LFS object content does not match its sha256 oid")
        # Atomic: the client uploads files with identical content in parallel under one oid.
        fd, tmp = tempfile.mkstemp(dir=self.lfs_store, prefix=f".{oid}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.lfs_store / oid)

    def lfs_pointer(self, repo: Path, oid: str) -> bytes:
        """Move an uploaded LFS object into the repo (where olah reads it) and return its pointer."""
        source = self.lfs_store / oid
        if not source.is_file():
            raise HubHTTPError(422, f"LFS object {oid} was not uploaded")
        target = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return LFS_POINTER.format(oid=oid, size=source.stat().st_size).encode()

    def remote_oid(self, repo: Path, branch: str, path: str) -> str | None:
        """What the client compares with its local oid: sha256 for LFS files, the blob sha otherwise."""
        head = self.rev(repo, f"refs/heads/{branch}")
        if head is None:
            return None
        blob = self.files(repo, head).get(path)
        if blob is None:
            return None
        match = POINTER_RE.match((self.read(repo, head, path) or b"").decode(errors="replace"))
        return match.group(1) if match else blob


# --------------------------------------------------------------------------- card metadata


def front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block of a README, or {} (the Hub treats a broken block as empty). A block YAML parses
    but cannot build (`x: 2001-13-45`, an integer past Python's digit limit, nesting past the stack) is broken
    too: its ValueError made every listing answer 500 while such a repo was on the server, and `pa pull`, whose
    pack search then failed, told "`pa pack pull ORG/NAME@1.0.0`" in whatever test ran after test_pack_hub's."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except (yaml.YAMLError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def hub_tags(card: dict[str, Any]) -> list[str]:
    """Tags as the Hub derives them: card tags plus library, license and base-model tags."""
    tags = [str(t) for t in card.get("tags") or []]
    if card.get("library_name"):
        tags.append(str(card["library_name"]))
    if card.get("license"):
        tags.append(f"license:{card['license']}")
    base = card.get("base_model")
    for model in base if isinstance(base, list) else [base] if base else []:
        tags.append(f"base_model:{model}")
    return list(dict.fromkeys(tags))


def yaml_problems(content: str) -> list[str]:
    """What the Hub's validate-yaml would reject in a card's metadata (the parts we rely on)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
    if not match:
        return []
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return [f"invalid YAML: {exc}"]
    if not isinstance(data, dict):
        return ["metadata must be a YAML mapping"]
    problems = []
    if "tags" in data and not (isinstance(data["tags"], list) and all(isinstance(t, str) for t in data["tags"])):
        problems.append('"tags" must be a list of strings')
    for i, entry in enumerate(data.get("model-index") or []):
        if not isinstance(entry, dict) or "name" not in entry:
            problems.append(f'"model-index[{i}].name" is required')
            continue
        for j, result in enumerate(entry.get("results") or []):
            task, dataset = result.get("task") or {}, result.get("dataset") or {}
            if "type" not in task:
                problems.append(f'"model-index[{i}].results[{j}].task.type" is required')
            if "type" not in dataset or "name" not in dataset:
                problems.append(f'"model-index[{i}].results[{j}].dataset" needs type and name')
            for k, metric in enumerate(result.get("metrics") or []):
                if "type" not in metric or "value" not in metric:
                    problems.append(f'"model-index[{i}].results[{j}].metrics[{k}]" needs type and value')
    return problems


# --------------------------------------------------------------------------- HTTP


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    raw_query: str = ""

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, content_type: str = "application/json") -> "Response":
        return cls(status, json.dumps(data).encode(), {"Content-Type": content_type})


REPO = r"/api/(?P<type>models|datasets)/(?P<org>[^/]+)/(?P<name>[^/]+)"


class HubServer:
    """The write/listing half of the Hub on loopback, in front of olah (the read half)."""

    def __init__(self, root: Path, token: str, other_token: str = OTHER_TOKEN) -> None:
        self.root = root
        self.token = token
        self.other_token = other_token
        self.store = GitStore(root)
        self.requests: list[tuple[str, str, int]] = []
        self.forged: dict[str, Response] = {}
        self.outages: list[list[Any]] = []
        self._http: ThreadingHTTPServer | None = None
        self._olah: subprocess.Popen[bytes] | None = None
        self.olah_port = 0
        self.routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", r"/api/repos/create", self.create_repo),
            ("GET", r"/api/(?P<type>models|datasets)", self.list_repos),
            ("POST", REPO + r"/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", REPO + r"/commit/(?P<rev>[^/]+)", self.commit),
            ("POST", REPO + r"/tag/(?P<rev>[^/]+)", self.tag),
            ("POST", r"/(?:datasets/)?(?P<org>[^/]+)/(?P<name>[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
            ("POST", r"/_lfs/verify", self.lfs_verify),
        ]

    # -- lifecycle

    @property
    def endpoint(self) -> str:
        assert self._http is not None, "server not started"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> "HubServer":
        self._start_olah()
        server = self

        class Handler(_Handler):
            hub = server

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="hubserver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._olah is not None:
            self._olah.terminate()
            try:
                self._olah.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._olah.kill()
                self._olah.wait()
            self._olah = None

    def _start_olah(self) -> None:
        work = self.root.parent / "olah"
        (work / "cache").mkdir(parents=True, exist_ok=True)
        self.olah_port = _free_port()
        config = work / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.olah_port}\n'
            f'repos-path = "{work / "cache"}"\nmirrors-path = ["{self.root}"]\n'
            "metadata-cache-ttl = 0\n"
            "[accessibility]\noffline = true\n"
        )
        log = (work / "olah.log").open("wb")
        self._olah = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(work / "logs")],
            cwd=work, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._olah.poll() is not None:
                raise RuntimeError(f"olah exited early; see {work / 'olah.log'}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.olah_port, timeout=2)
                conn.request("GET", "/api/models/_/_/refs")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("olah did not start within 60 s")

    # -- helpers for tests

    def repo_path(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.store.path(repo_type, repo_id)

    def read(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes | None:
        return self.store.read(self.store.repo(repo_type, repo_id), revision, path)

    def tags(self, repo_id: str, repo_type: str = "model") -> list[str]:
        out = self.store.git(self.store.repo(repo_type, repo_id), "tag", "--list")
        return out.split() if out else []

    def forge(self, path: str, data: Any) -> None:
        """Answer GET `path` (any query) with `data` instead of the truth: a hostile or broken Hub.

        olah cannot list a git tree holding '..' entries at all, so a listing that names paths
        outside the repo (what a malicious mirror could send) is simulated here.
        """
        self.forged[path] = Response.json(data)

    def fail(self, method: str, pattern: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` `method` requests whose path matches `pattern` with `status`: an outage."""
        self.outages.append([method, re.compile(pattern), status, times])

    def put_files(self, repo_id: str, files: dict[str, bytes], message: str = "edit", repo_type: str = "model") -> str:
        """Commit files straight into a repo (as a tamperer with push access would)."""
        return self.store.commit(repo_type, repo_id, "main", files, [], message)

    # -- dispatch

    def handle(self, request: Request) -> Response:
        for outage in self.outages:
            method, pattern, status, times = outage
            if times > 0 and method == request.method and pattern.fullmatch(request.path):
                outage[3] -= 1
                return self.error(HubHTTPError(status, "Internal Error - We're working hard to fix this"))
        try:
            self.refuse_unknown_token(request)
        except HubHTTPError as exc:
            return self.error(exc)
        if request.method == "GET" and request.path in self.forged:
            return self.forged[request.path]
        for method, pattern, handler in self.routes:
            if method == request.method:
                match = re.fullmatch(pattern, request.path)
                if match:
                    try:
                        return handler(request, **match.groupdict())
                    except HubHTTPError as exc:
                        return self.error(exc)
        try:
            self.require_read(request)
        except HubHTTPError as exc:
            return self.error(exc)
        return self.with_privacy(request, self.missing_entry(request, self.proxy(request)))

    def require_read(self, request: Request) -> None:
        """Answer a read of a repository that does not exist the way the Hub does (401 anonymous, 404 with a
        token; RepoNotFound either way), a private one read by anyone but its owner as if it were missing, and
        a gated one with GatedRepo (401 anonymous, 403 with a token of a user not granted access). olah
        answered a missing repository's refs with 404 EntryNotFound, which the client reads as a missing file,
        so `pa pack pull my-org/typo` said "404 Client Error" here and "repository not found" on the Hub."""
        repo = _read_target(request.path)
        if repo is None:
            return
        repo_type, repo_id = repo
        exists = self.store.exists(repo_type, repo_id)
        if exists and self.authorized(request):
            return
        meta = self.store.meta(repo_type, repo_id) if exists else {}
        if not exists or meta.get("private"):
            if request.headers.get("authorization"):
                raise HubHTTPError(404, "Repository not found", "RepoNotFound")
            raise HubHTTPError(401, "Invalid username or password.", "RepoNotFound")
        if meta.get("gated"):  # huggingface.co's words for a gated repository
            if request.headers.get("authorization"):
                raise HubHTTPError(403, f"Access to model {repo_id} is restricted and you are not in the authorized "
                                        f"list. Visit {self.endpoint}/{repo_id} to ask for access.", "GatedRepo")
            raise HubHTTPError(401, f"Access to model {repo_id} is restricted. You must have access to it and be "
                                    "authenticated to access it. Please log in.", "GatedRepo")

    def missing_entry(self, request: Request, response: Response) -> Response:
        """olah answers 401 for a file or folder a model repository lacks; the Hub answers 404
        EntryNotFound, which transformers expects of the files a model may not have (vocab.json,
        additional_chat_templates/) when it downloads one."""
        match = re.fullmatch(r"/(?:api/models/)?(?P<org>[^/]+)/(?P<name>[^/]+)/(?:resolve|tree)/.+", request.path)
        if response.status != 401 or not match or not self.store.exists("model", f"{match['org']}/{match['name']}"):
            return response
        return self.error(HubHTTPError(404, "Entry not found", "EntryNotFound"))

    def with_privacy(self, request: Request, response: Response) -> Response:
        """Repo info (`model_info`, `dataset_info`) with the `private` flag the repo was created with
        (olah, reading plain git mirrors, always answers false)."""
        match = re.fullmatch(REPO + r"(?:/revision/[^/]+)?", request.path)
        if request.method != "GET" or response.status != 200 or not match:
            return response
        info = json.loads(response.body)
        repo_type, repo_id = REPO_TYPES[match["type"]], f"{match['org']}/{match['name']}"
        info["private"] = bool(self.store.meta(repo_type, repo_id).get("private"))
        return Response(200, json.dumps(info).encode(), {**response.headers, "Content-Length": str(len(json.dumps(info).encode()))})

    @staticmethod
    def error(exc: HubHTTPError) -> Response:
        response = Response.json({"error": exc.message, **exc.extra}, exc.status)
        response.headers["X-Error-Message"] = exc.message
        if exc.code:
            response.headers["X-Error-Code"] = exc.code
        return response

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.token}"

    def require_auth(self, request: Request, refused: str = "You don't have write access to this repository") -> None:
        """A write (or whoami) needs the owner's token: none is a 401, and another user's valid token a 403 with
        `refused`, as huggingface.co answers a token without write access (this server answered it 401, the
        invalid-token answer, so no test could see what pa says to a user pushing to an organization not theirs)."""
        if self.authorized(request):
            return
        if request.headers.get("authorization") == f"Bearer {self.other_token}":
            raise HubHTTPError(403, refused)
        raise HubHTTPError(401, INVALID_TOKEN)

    def refuse_unknown_token(self, request: Request) -> None:
        """A token the Hub does not know (mistyped, revoked) is refused on every request, a public repository's
        read included, as huggingface.co refuses it: this server let it read public repositories, so no test
        could see what pa says to a user whose HF_TOKEN is wrong and who pulls a public adapter or pack."""
        given = request.headers.get("authorization")
        if given is not None and given not in (f"Bearer {self.token}", f"Bearer {self.other_token}"):
            raise HubHTTPError(401, INVALID_TOKEN)

    # -- endpoints

    def whoami(self, request: Request) -> Response:
        if request.headers.get("authorization") == f"Bearer {self.other_token}":
            return Response.json({"type": "user", "name": OTHER_USER, "fullname": "Another User", "orgs": [],
                                  "auth": {"type": "access_token", "accessToken": {"displayName": "theirs", "role": "write"}}})
        self.require_auth(request)
        return Response.json({"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                              "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}})

    def validate_yaml(self, request: Request) -> Response:
        problems = yaml_problems(request.json().get("content", ""))
        return Response.json({"errors": [{"message": p} for p in problems], "warnings": []}, 400 if problems else 200)

    def create_repo(self, request: Request) -> Response:
        payload = request.json()
        repo_type = payload.get("type") or "model"
        name, org = payload.get("name", ""), payload.get("organization") or USER
        self.require_auth(request, f'You don\'t have the rights to create a {repo_type} under the namespace "{org}"')
        if repo_type not in URL_PREFIX:
            raise HubHTTPError(400, f"unsupported repo type {repo_type}")
        if not re.fullmatch(r"[\w.-]+", name or "") or not re.fullmatch(r"[\w.-]+", org):
            raise HubHTTPError(400, "invalid repo name")
        repo_id = f"{org}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        if not self.store.create(repo_type, repo_id, private):
            raise HubHTTPError(409, f"You already created this {repo_type} repo", url=url)
        return Response.json({"url": url, "name": repo_id, "id": repo_id})

    def preupload(self, request: Request, type: str, org: str, name: str, rev: str) -> Response:
        self.require_auth(request)
        repo_type, repo_id, branch = REPO_TYPES[type], f"{org}/{name}", unquote(rev)
        repo = self.store.repo(repo_type, repo_id)
        attributes = (self.store.read(repo, f"refs/heads/{branch}", ".gitattributes") or b"").decode()
        lfs_patterns = [line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line]
        files = []
        for item in request.json().get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            is_lfs = (any(fnmatch.fnmatch(item["path"].rsplit("/", 1)[-1], p) for p in lfs_patterns)
                      or b"\x00" in sample or item.get("size", 0) > REGULAR_MAX_BYTES)
            files.append({"path": item["path"], "uploadMode": "lfs" if is_lfs else "regular", "shouldIgnore": False,
                          "oid": self.store.remote_oid(repo, branch, item["path"])})
        return Response.json({"files": files, "commitOid": self.store.rev(repo, f"refs/heads/{branch}")})

    def lfs_batch(self, request: Request, org: str, name: str) -> Response:
        self.require_auth(request)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubHTTPError(400, "only uploads are supported here; downloads go through resolve")
        objects = []
        for obj in payload.get("objects", []):
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self.store.lfs_store / obj["oid"]).is_file():
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/_lfs/{obj['oid']}", "header": {}},
                                    "verify": {"href": f"{self.endpoint}/_lfs/verify", "header": {}}}
            objects.append(entry)
        return Response.json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, request: Request, oid: str) -> Response:
        self.store.store_lfs(oid, request.body)
        return Response(200)

    def lfs_verify(self, request: Request) -> Response:
        self.require_auth(request)
        payload = request.json()
        stored = self.store.lfs_store / payload.get("oid", "")
        if not stored.is_file() or stored.stat().st_size != payload.get("size"):
            raise HubHTTPError(404, "LFS object not found")
        return Response.json({"success": True})

    def commit(self, request: Request, type: str, org: str, name: str, rev: str) -> Response:
        self.require_auth(request)
        repo_type, repo_id, branch = REPO_TYPES[type], f"{org}/{name}", unquote(rev)
        repo = self.store.repo(repo_type, repo_id)
        header: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        deletes: list[str] = []
        for line in request.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                continue
            path = _checked_path(value["path"].rstrip("/") if key == "deletedFolder" else value["path"])
            if key == "file":
                files[path] = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
            elif key == "lfsFile":
                files[path] = self.store.lfs_pointer(repo, value["oid"])
            elif key == "deletedFile":
                deletes.append(path)
            elif key == "deletedFolder":
                deletes.append(path.rstrip("/") + "/")
            else:
                raise HubHTTPError(400, f"unknown commit operation {key!r}")
        message = "\n\n".join(p for p in (header.get("summary", ""), header.get("description", "")) if p)
        sha = self.store.commit(repo_type, repo_id, branch, files, deletes, message or "update",
                                parent=header.get("parentCommit"))
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}/commit/{sha}"
        return Response.json({"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    def tag(self, request: Request, type: str, org: str, name: str, rev: str) -> Response:
        self.require_auth(request)
        payload = request.json()
        self.store.tag(REPO_TYPES[type], f"{org}/{name}", unquote(rev), payload["tag"], payload.get("message"))
        return Response.json({})

    def list_repos(self, request: Request, type: str) -> Response:
        """`list_models` / `list_datasets`: every `filter` must be among the repo's tags (as on the Hub)."""
        repo_type = REPO_TYPES[type]
        wanted = request.query.get("filter", [])
        search = [s.lower() for s in request.query.get("search", [])]
        author = request.query.get("author", [None])[0]
        with_card = request.query.get("cardData", ["false"])[0].lower() in ("1", "true")
        items = []
        base = self.root / type
        for repo in sorted(base.glob("*/*")) if base.is_dir() else []:
            repo_id = f"{repo.parent.name}/{repo.name}"
            item = self._listing_item(repo_type, repo_id, repo, request, with_card)
            if item is None or (author and repo.parent.name != author):
                continue
            if all(f in item["tags"] for f in wanted) and all(s in repo_id.lower() for s in search):
                items.append(item)
        limit = int(request.query.get("limit", ["0"])[0] or 0)
        return Response.json(items[:limit] if limit else items)

    def _listing_item(self, repo_type: str, repo_id: str, repo: Path, request: Request,
                      with_card: bool) -> dict[str, Any] | None:
        if not (repo / ".git").is_dir() or (self.store.meta(repo_type, repo_id).get("private") and not self.authorized(request)):
            return None
        sha = self.store.rev(repo, "refs/heads/main")
        if sha is None:
            return None
        card = front_matter((self.store.read(repo, sha, "README.md") or b"").decode(errors="replace"))
        when = self.store.git(repo, "log", "-1", "--date=format-local:%Y-%m-%dT%H:%M:%S.000Z", "--format=%cd", sha,
                              env={"TZ": "UTC"})
        item: dict[str, Any] = {"_id": hashlib.sha256(repo_id.encode()).hexdigest()[:24], "id": repo_id, "sha": sha,
                                "author": repo_id.split("/")[0], "private": bool(self.store.meta(repo_type, repo_id).get("private")),
                                "tags": hub_tags(card), "downloads": 0, "likes": 0, "lastModified": when, "createdAt": when}
        if repo_type == "model":
            item["modelId"] = repo_id
            if card.get("library_name"):
                item["library_name"] = card["library_name"]
        if with_card:
            item["cardData"] = card
        return item

    # -- forwarding to olah

    def proxy(self, request: Request) -> Response:
        path = _olah_path(request.path)
        query = request.raw_query
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        conn = http.client.HTTPConnection("127.0.0.1", self.olah_port, timeout=60)
        try:
            conn.request(request.method, path + (f"?{query}" if query else ""), body=request.body or None, headers=headers)
            upstream = conn.getresponse()
            body = upstream.read()
            out = Response(upstream.status, body, {})
            for key, value in upstream.getheaders():
                if key.lower() in HOP_HEADERS and not (request.method == "HEAD" and key.lower() == "content-length"):
                    continue
                if key.lower() == "location":
                    value = value.replace(f"http://127.0.0.1:{self.olah_port}", self.endpoint)
                out.headers[key] = value
            return out
        finally:
            conn.close()


def _olah_path(path: str) -> str:
    """Rewrite the two requests olah answers wrongly for local mirrors (see the module docstring)."""
    if re.fullmatch(REPO, path):
        return path + "/revision/main"
    if re.fullmatch(REPO + r"/tree/[^/]+", path):
        return path + "/"
    return path


def _read_target(path: str) -> tuple[str, str] | None:
    """(repo type, repo id) a read request is about: API info/refs/trees or a `resolve` download."""
    match = re.match(REPO + r"(?:/|$)", path)
    if match:
        return REPO_TYPES[match["type"]], f"{match['org']}/{match['name']}"
    match = re.match(r"/(?P<datasets>datasets/)?(?P<org>[^/]+)/(?P<name>[^/]+)/resolve/", path)
    if match:
        return ("dataset" if match["datasets"] else "model"), f"{match['org']}/{match['name']}"
    return None


def _checked_path(path: str) -> str:
    """Paths the Hub accepts in a commit: relative, no '..' or empty parts, not inside .git."""
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise HubHTTPError(400, f"Invalid path: {path}")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 plumbing: read the request (Content-Length or chunked), answer with a length."""

    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr access logs
        return

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        request = Request(self.command, url.path,
                          parse_qs(url.query, keep_blank_values=True),
                          {k.lower(): v for k, v in self.headers.items()}, self._read_body(), url.query)
        try:
            response = self.hub.handle(request)
        except Exception as exc:  # a bug in the test server: answer 500 with the reason
            response = Response.json({"error": f"hubserver: {type(exc).__name__}: {exc}"}, 500)
        self.hub.requests.append((request.method, request.path, response.status))
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if "Content-Length" not in response.headers and "content-length" not in response.headers:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve


def start_hub(workdir: Path, token: str) -> HubServer:
    """Start olah and the front server on loopback, repositories under `workdir/repos`."""
    root = workdir / "repos"
    root.mkdir(parents=True, exist_ok=True)
    return HubServer(root, token).start()


if __name__ == "__main__":  # manual use: python tests/hubserver.py  -> prints the endpoint, Ctrl-C to stop
    hub = start_hub(Path(tempfile.mkdtemp(prefix="hubserver-")), os.environ.get("HUB_TOKEN", "hf_test"))
    print(hub.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()

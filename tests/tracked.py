"""Reading back what `--report-to tensorboard` wrote, as TensorBoard would: the event files' records."""

from __future__ import annotations

import struct
from pathlib import Path


def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} over every event file in `logdir` (a resumed training adds a file).

    Each record of a TFRecord file is an 8-byte length, its 4-byte CRC, the serialized Event and
    the data's 4-byte CRC; tensorboardX ships the Event proto."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (size,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + size])
            at += 12 + size + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars

r"""Sampled pipeline inputs an agent uploads for retraining (fresh data).

A :class:`SampleUpload` is a frame (:func:`encode_frame`): this header and the
input tensors the module was fed, on ``{p}/agents/{id}/samples/{module}``
(:meth:`Topics.samples`). ``source_ts`` is the frame's capture time, the same
as the pipeline event's ``source_ts``: ground truth that arrives later is
joined to the sample on ``(site, source_ts rounded to the millisecond)``.
``offered``, ``uploaded`` and ``dropped`` are the agent's running counts for
the module since it started, so the control plane sees what the budget cost.

Example:
    >>> from edge_agent.protocol import Tensor, decode_frame, encode_frame, parse_header
    >>> head = SampleUpload(agent="cam-07", site="j1", module="counter", version="3",
    ...                     source_ts=12.5, seq=1, offered=4, uploaded=1)
    >>> frame = encode_frame(head, [Tensor("x", "uint8", (1,), b"\x07")])
    >>> header, tensors = decode_frame(frame)
    >>> parse_header(header, SampleUpload).source_ts, tensors[0].shape
    (12.5, (1,))
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ._envelope import Envelope
from ._topics import Topics

__all__ = ["SampleUpload"]


class SampleUpload(Envelope):
    """The header of one uploaded input sample (its tensors follow in the frame)."""

    kind: Literal["sample"] = "sample"
    agent: str
    site: str
    module: str
    version: str = Field(description="The module version that ran on this input.")
    source_ts: float = Field(description="When the input was captured (Unix s); the join key.")
    seq: int = Field(ge=0, description="The agent's upload sequence number for the module.")
    offered: int = Field(0, ge=0, description="Inputs offered to the reservoir so far.")
    uploaded: int = Field(0, ge=0, description="Inputs uploaded so far, this one included.")
    dropped: int = Field(0, ge=0, description="Inputs dropped unsent (the budget) so far.")

    @field_validator("agent", "site", "module")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        return Topics.check_segment(v)

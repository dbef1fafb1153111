"""Error frames carry a handler's structured code and detail to the host's RemoteError."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspex.errors import RemoteError
from dspex.pool import Pool

HANDLERS = str(Path(__file__).with_name("_coded_handlers.py"))


@pytest.mark.timeout(60)
async def test_tagged_exception_arrives_with_code_and_detail() -> None:
    with Pool("coded", 1, handlers=[HANDLERS], forward_stderr=False) as p:
        with pytest.raises(RemoteError) as sync_info:
            p.call("tagged", "the raw reply")
        with pytest.raises(RemoteError) as async_info:
            await p.acall("tagged", "async reply")
        with pytest.raises(RemoteError) as plain:
            p.call("untagged")
    err = sync_info.value
    assert err.code == "parse"
    assert err.detail == {"code": "parse", "raw": "the raw reply", "adapter": "chat"}
    assert err.remote_type.endswith("TaggedError")
    assert async_info.value.detail is not None and async_info.value.detail["raw"] == "async reply"
    assert plain.value.code is None and plain.value.detail is None
    assert plain.value.remote_type == "ValueError"

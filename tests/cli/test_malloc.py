"""The CLI keeps freed memory in the process (glibc's trim threshold / top pad via mallopt)."""

from __future__ import annotations

import sys

import pytest

from advrobust._malloc import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_settings_are_accepted_by_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVROBUST_MALLOC", raising=False)
    try:
        import ctypes

        ctypes.CDLL(None).mallopt  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc")
    assert keep_freed_memory()  # every mallopt call returned 1 (accepted)


def test_default_keeps_glibc_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVROBUST_MALLOC", "default")
    assert not keep_freed_memory()

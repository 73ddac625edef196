"""Every store satisfies one store protocol, and everything that takes a store
accepts any of them (and refuses what is not one, naming the argument)."""

from __future__ import annotations

from pathlib import Path

import pytest
import usagewarden as uw


def test_sqlite_stores_satisfy_their_protocol(tmp_path: Path) -> None:
    with uw.SQLiteStore(tmp_path / "s.db") as sync_store:
        assert isinstance(sync_store, uw.MeteringStore)
        assert not isinstance(sync_store, uw.AsyncMeteringStore)
    async_store = uw.AsyncSQLiteStore(tmp_path / "a.db")
    try:
        assert isinstance(async_store, uw.AsyncMeteringStore)
        assert not isinstance(async_store, uw.MeteringStore)
        assert isinstance(async_store.blocking(), uw.MeteringStore)
    finally:
        async_store.blocking().close()


def test_what_is_not_a_store_is_refused_by_name(tmp_path: Path) -> None:
    not_a_store = tmp_path / "not-a-store.db"
    with pytest.raises(TypeError, match="store"):
        uw.Warden(store=not_a_store)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store"):
        uw.BudgetEngine([], not_a_store)  # type: ignore[arg-type]

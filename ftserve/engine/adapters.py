"""The adapter LRU of one base: slots bounded by count and bytes, pinned while rows use them."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ftserve.core import metrics
from ftserve.engine.adapter_files import LoadedAdapter
from ftserve.engine.lora import SlotTable


@dataclass
class _Entry:
    slot: int
    nbytes: int
    pins: int = 0
    doomed: bool = False  # unloaded (model deleted) while rows still used it


class AdapterCache:
    """Resident adapters of one base by name; only the scheduler thread calls it."""

    def __init__(self, table: SlotTable, max_count: int, max_bytes: int) -> None:
        self.table = table
        self.max_count = max(1, max_count)
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def slot(self, name: str) -> int | None:
        """The adapter's slot if resident and servable (marks it most recently used)."""
        entry = self.entries.get(name)
        if entry is None or entry.doomed:
            return None
        self.entries.move_to_end(name)
        return entry.slot

    def make_room(self, nbytes: int) -> bool:
        """Evict least recently used, unpinned adapters until one of `nbytes` fits; False if pins prevent it."""
        while self.entries and (len(self.entries) >= self.max_count or self.nbytes + nbytes > self.max_bytes):
            victim = next((n for n, e in self.entries.items() if e.pins == 0), None)
            if victim is None:
                return False
            self._remove(victim)
            metrics.ADAPTER_EVICTIONS.inc()
        # An adapter larger than the byte limit is still served, alone.
        return True

    def attach(self, name: str, adapter: LoadedAdapter) -> int:
        slot = self.table.attach(adapter)
        self.entries[name] = _Entry(slot, adapter.nbytes)
        metrics.ADAPTERS_RESIDENT.inc()
        metrics.ADAPTER_BYTES.inc(adapter.nbytes)
        return slot

    def pin(self, name: str) -> None:
        self.entries[name].pins += 1

    def unpin(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is None:
            return
        entry.pins -= 1
        if entry.doomed and entry.pins == 0:
            self._remove(name)

    def unload(self, name: str) -> bool:
        """Drop an adapter (its model was deleted): now, or when its last row finishes."""
        entry = self.entries.get(name)
        if entry is None:
            return False
        if entry.pins:
            entry.doomed = True
        else:
            self._remove(name)
        return True

    def _remove(self, name: str) -> None:
        entry = self.entries.pop(name)
        self.table.detach(entry.slot)
        metrics.ADAPTERS_RESIDENT.dec()
        metrics.ADAPTER_BYTES.dec(entry.nbytes)

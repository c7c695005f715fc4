"""XE_MMIO_REGION_OPEN's bound: at most MAX_MMIO_REGIONS_OPEN regions open per file, past
it ENOMEM, counted as a limit; and the offset manager every region (and BO) goes
through, whose removals must not change what offsets are handed out or found.
"""

from __future__ import annotations

import itertools
import random
from errno import EBUSY, ENOMEM
from typing import Any

from conftest import baseline
from helpers import errno_of
from test_limits import connect, status
from test_vm_export import settle_to

from xed.device.mmio import MAX_MMIO_REGIONS_OPEN
from xed.device.vma_manager import FIRST_OFFSET, VmaOffsetManager

PAGE = 4096


def test_the_limit_is_64() -> None:
    """The documented figure (op table, REFERENCE.md) is the constant's."""
    assert MAX_MMIO_REGIONS_OPEN == 64


def test_the_65th_info_region_is_enomem_and_closing_one_makes_room(make_daemon: Any) -> None:
    """64 info regions open in one file; the 65th is ENOMEM and leaves no offset behind;
    another file opens its own; a closed region makes room for exactly one more; the
    refusals are counted and logged as a limit; everything goes when the files do."""
    daemon = make_daemon()
    before = baseline(daemon)
    offsets_before = before[1].mmap_offsets
    with connect(daemon) as hog, connect(daemon) as other:
        regions = [hog.mmio_open("info") for _ in range(MAX_MMIO_REGIONS_OPEN)]
        assert len({r.offset for r in regions}) == MAX_MMIO_REGIONS_OPEN
        assert errno_of(hog.mmio_open, "info") == ENOMEM
        assert status(daemon).objects.mmap_offsets == offsets_before + MAX_MMIO_REGIONS_OPEN
        # another file is not held back by this one's regions
        theirs = [other.mmio_open("info") for _ in range(3)]
        assert len(theirs) == 3
        hog.mmio_close(regions.pop().region_id)
        regions.append(hog.mmio_open("info"))
        assert errno_of(hog.mmio_open, "info") == ENOMEM
        assert status(daemon).limits_hit == 2
        assert status(daemon).objects.mmap_offsets == offsets_before + MAX_MMIO_REGIONS_OPEN + 3
    assert settle_to(daemon, before) == before
    assert '"limit": "mmio_regions"' in daemon.log_text()


def test_the_doorbell_counts_towards_the_bound(make_daemon: Any) -> None:
    """A file at the bound gets ENOMEM for its doorbell too, without taking a page; the
    doorbell is one of the 64; a second doorbell stays EBUSY (checked first)."""
    daemon = make_daemon("[device]\ndoorbell_pages = 2\n")  # one doorbell page only
    before = baseline(daemon)
    with connect(daemon) as hog:
        infos = [hog.mmio_open("info") for _ in range(MAX_MMIO_REGIONS_OPEN)]
        assert errno_of(hog.mmio_open, "doorbell") == ENOMEM
        hog.mmio_close(infos.pop().region_id)
        hog.mmio_open("doorbell")  # the refused open took no page: the only one is free
        assert errno_of(hog.mmio_open, "info") == ENOMEM
        assert errno_of(hog.mmio_open, "doorbell") == EBUSY
    assert settle_to(daemon, before) == before


def test_a_released_file_gives_its_regions_back(make_daemon: Any) -> None:
    """A file that disconnects at the bound frees them all: a new file opens 64 again."""
    daemon = make_daemon()
    before = baseline(daemon)
    for _ in range(2):
        with connect(daemon) as dev:
            for _ in range(MAX_MMIO_REGIONS_OPEN):
                dev.mmio_open("info")
            assert errno_of(dev.mmio_open, "info") == ENOMEM
        assert settle_to(daemon, before) == before


# --- the offset manager: cheap removal, the same offsets and lookups ------------------------
class Model:
    """The manager as it was: a sorted list of live nodes, searched linearly."""

    def __init__(self) -> None:
        self.next = FIRST_OFFSET
        self.live: dict[int, tuple[int, int]] = {}  # start -> (size, obj)

    def add(self, obj: int, size: int) -> tuple[int, int]:
        pages = -(-size // PAGE)
        start = self.next
        self.next += (pages + 1) * PAGE
        self.live[start] = (pages * PAGE, obj)
        return start, pages * PAGE

    def containing(self, offset: int) -> int | None:
        for start, (size, obj) in self.live.items():
            if start <= offset < start + size:
                return obj
        return None


def test_offsets_and_lookups_match_a_model_under_any_removal_order() -> None:
    """Random adds and removals (bursts from the front, the back and the middle, and
    everything at once): every offset handed out and every lookup, at each node's edges,
    its guard page and before the first, is the model's."""
    rng = random.Random(20240601)
    vma, model = VmaOffsetManager(PAGE), Model()
    nodes: list[Any] = []
    names = itertools.count()  # every node's obj is its own

    def check() -> None:
        assert len(vma) == len(model.live)
        assert [n.obj for n in vma.nodes()] == [obj for _, obj in model.live.values()]
        assert vma.containing(FIRST_OFFSET - 1) is None
        probes = [FIRST_OFFSET + rng.randrange(model.next - FIRST_OFFSET + PAGE) for _ in range(50)]
        for node in nodes:
            probes += [node.start, node.start + node.size - 1, node.start + node.size]
        for offset in probes:
            found = vma.containing(offset)
            assert (found.obj if found else None) == model.containing(offset), hex(offset)
            exact = vma.exact(offset)
            expected = model.live[offset][1] if offset in model.live else None
            assert (exact.obj if exact else None) == expected

    for step in range(40):
        for _ in range(rng.randrange(1, 120)):
            size = rng.randrange(1, 4 * PAGE)
            node = vma.add(next(names), size)
            assert (node.start, node.size) == model.add(node.obj, size)
            nodes.append(node)
        kind = step % 4
        count = rng.randrange(len(nodes) + 1)
        if kind == 0:
            gone, nodes = nodes[:count], nodes[count:]
        elif kind == 1:
            gone, nodes = nodes[len(nodes) - count :], nodes[: len(nodes) - count]
        elif kind == 2:
            rng.shuffle(nodes)
            gone, nodes = nodes[:count], sorted(nodes[count:], key=lambda n: n.start)
        else:
            gone, nodes = nodes, []
        for node in gone:
            vma.remove(node)
            del model.live[node.start]
            assert not node.allowed
        check()

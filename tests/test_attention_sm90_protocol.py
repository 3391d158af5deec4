"""The synchronization protocol of the Hopper forward (``kernels/_attn_fwd_sm90_impl.py``), modelled on the CPU.

The kernel cannot run here, but its hangs and races would come from the protocol: who arrives on which mbarrier how
many times, the phases each side waits on, the order of the loads, the named-barrier turns. This model replays that
protocol with the kernel's arrival counts - warp 0 (tile ring, K / V TMA), warps 1-3 (tile ring; 2-3 load Q), the two
consumer warpgroups (ring, Q, K, V, ping-pong turns) - under random interleavings, TMA completions being separate
asynchronous events, and checks that every run terminates (no deadlock), that each consumer reads the tile / chunk
it expects from every buffer, and that no buffer is overwritten while a consumer still uses it. It models the
kernel's code, so keep it in step when the protocol changes (ring slots, arrival counts, load order)."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator

import pytest

from varblock.kernels.attention_fwd_sm90 import STAGES, THREADS

TILE_RING = 2  # _attn_fwd_sm90_impl.TILE_RING
WG = 128  # threads per warpgroup
Q_THREADS = 64  # _attn_fwd_sm90_impl.Q_THREADS: producer warps 2-3 load Q
Step = Generator[Callable[[], bool], None, None]  # an agent: yields "may I continue?" predicates


class MBarrier:
    """An mbarrier: a phase completes when ``count`` arrivals and all expected transaction bytes are in."""

    def __init__(self, count: int):
        self.count, self.arrived, self.tx, self.phase = count, 0, 0, 0

    def done(self, parity: int) -> bool:
        """try_wait.parity: the phase with this parity has completed (the current phase's parity differs)."""
        return (self.phase & 1) != parity

    def arrive(self, n: int = 1, expect_tx: int = 0) -> None:
        self.arrived += n
        self.tx += expect_tx
        assert self.arrived <= self.count, "more arrivals than the barrier's count in one phase"
        self._complete()

    def complete_tx(self, n: int) -> None:
        self.tx -= n
        self._complete()

    def _complete(self) -> None:
        if self.arrived == self.count and self.tx == 0:
            self.arrived, self.phase = 0, self.phase + 1


class Pipe:
    """A pipeline of ``stages`` (full, empty) mbarrier pairs and the buffer contents (for the race checks)."""

    def __init__(self, stages: int, producers: int, consumers: int):
        self.full = [MBarrier(producers) for _ in range(stages)]
        self.empty = [MBarrier(consumers) for _ in range(stages)]
        self.data: list[object] = [None] * stages
        self.readers = [0] * stages
        self.stages = stages


class State:
    """PipelineState: index and phase bit; producers start at phase 1 (the first acquire passes)."""

    def __init__(self, stages: int, producer: bool):
        self.stages, self.index, self.phase = stages, 0, int(producer)

    def advance(self) -> None:
        self.index += 1
        if self.index == self.stages:
            self.index, self.phase = 0, self.phase ^ 1

    def clone(self) -> State:
        s = State(self.stages, False)
        s.index, s.phase = self.index, self.phase
        return s


class NamedBarrier:
    """bar.sync / bar.arrive with a thread count: a generation completes at ``count`` arrivals."""

    def __init__(self):
        self.arrived: dict[int, int] = {}
        self.generation: dict[int, int] = {}

    def arrive(self, bid: int, n: int, count: int) -> int:
        """Arrive ``n`` threads; returns the generation they belong to."""
        g = self.generation.get(bid, 0)
        a = self.arrived.get(bid, 0) + n
        if a == count:
            self.generation[bid], a = g + 1, 0
        assert a < count
        self.arrived[bid] = a
        return g

    def passed(self, bid: int, gen: int) -> bool:
        return self.generation.get(bid, 0) > gen


class Cta:
    """One CTA: its buffers, barriers and the asynchronous TMA copies in flight."""

    def __init__(self, tiles: list[int], chunks: dict[int, int], pingpong: bool, q_tma: bool, dead: float = 0.0):
        self.tiles, self.chunks, self.pingpong, self.q_tma = tiles, chunks, pingpong, q_tma
        self.dead = dead  # probability that a chunk's drop bits drop a warpgroup's whole row half
        self.ring = Pipe(TILE_RING, 32, THREADS - 32)
        self.q = Pipe(1, Q_THREADS, 2 * WG)
        self.stages = STAGES[128]
        self.k = Pipe(self.stages, 1, 8)
        self.v = Pipe(self.stages, 1, 8)
        self.bars = NamedBarrier()
        self.tma: list[tuple[Pipe, int, object]] = []  # copies in flight: (pipe, stage, content)

    # ---- producer side
    def push(self, st: State, value: int) -> Step:
        r = self.ring
        yield lambda: r.empty[st.index].done(st.phase)
        r.data[st.index] = value
        r.full[st.index].arrive(32)
        st.advance()

    def pop(self, st: State, n: int, out: list) -> Step:
        r = self.ring
        yield lambda: r.full[st.index].done(st.phase)
        out.append(r.data[st.index])
        r.empty[st.index].arrive(n)
        st.advance()

    def load_kv(self, pipe: Pipe, st: State, content: object) -> Step:
        i, ph = st.index, st.phase
        yield lambda: pipe.empty[i].done(ph)
        assert pipe.readers[i] == 0, f"overwriting {pipe.data[i]} while it is read"
        pipe.full[i].arrive(1, expect_tx=1)
        self.tma.append((pipe, i, content))

    def warp0(self) -> Step:
        ring_p = State(TILE_RING, True)
        kv = State(self.stages, True)
        order = list(self.tiles) + [-1]
        yield from self.push(ring_p, order[0])
        for pos, t in enumerate(order[:-1]):
            yield from self.push(ring_p, order[pos + 1])  # early: the next index
            n = self.chunks[t]
            if n == 0:
                continue
            yield from self.load_kv(self.k, kv, ("K", t, 0))
            for ci in range(1, n):
                prev = kv.clone()
                kv.advance()
                yield from self.load_kv(self.k, kv, ("K", t, ci))
                yield from self.load_kv(self.v, prev, ("V", t, ci - 1))
            yield from self.load_kv(self.v, kv, ("V", t, n - 1))
            kv.advance()

    def load_q(self, st: State, t: int, n: int) -> Step:
        """Warps 2-3: cp.async (writes done before the arrive) or, with ``pack_gqa == 1``, a TMA box whose bytes
        warp 2 expects on the full barrier before the 64 arrivals."""
        pq = self.q
        yield lambda: pq.empty[0].done(st.phase)
        assert pq.readers[0] == 0, "Q overwritten while read"
        if self.q_tma:
            pq.full[0].arrive(0, expect_tx=1)
            self.tma.append((pq, 0, ("Q", t)))
        else:
            pq.data[0] = ("Q", t)  # every producer thread writes its own rows of the same tile
        pq.full[0].arrive(n)
        st.advance()

    def warps123(self) -> Step:
        ring_c = State(TILE_RING, False)
        q = State(1, True)
        got: list[int] = []
        yield from self.pop(ring_c, 96, got)
        while got[-1] >= 0:
            t = got[-1]
            if self.chunks[t] > 0:
                yield from self.load_q(q, t, Q_THREADS)  # warps 2-3 (warp 1 only pops)
            yield from self.pop(ring_c, 96, got)

    # ---- consumer side
    def wait_read(self, pipe: Pipe, st: State, want: object, wg: int) -> Step:
        i, ph = st.index, st.phase
        yield lambda: pipe.full[i].done(ph)
        assert pipe.data[i] == want, f"WG{wg} read {pipe.data[i]}, expected {want}"
        pipe.readers[i] += 1

    def release(self, pipe: Pipe, st: State, n: int) -> None:
        pipe.readers[st.index] -= 1
        pipe.empty[st.index].arrive(n)

    def turn_wait(self, wg: int) -> Step:
        if self.pingpong:
            g = self.bars.arrive(3 + wg, WG, 2 * WG)
            yield lambda: self.bars.passed(3 + wg, g)

    def turn_pass(self, wg: int) -> None:
        if self.pingpong:
            self.bars.arrive(3 + 1 - wg, WG, 2 * WG)

    def consumer(self, wg: int) -> Step:
        ring_c = State(TILE_RING, False)
        q = State(1, False)
        kv = State(self.stages, False)
        if self.pingpong and wg == 0:
            self.bars.arrive(3, WG, 2 * WG)
        got: list[int] = []
        yield from self.pop(ring_c, WG, got)
        while got[-1] >= 0:
            t, n = got[-1], self.chunks[got[-1]]
            if n > 0:
                yield from self.wait_read(self.q, q, ("Q", t), wg)
                yield from self.wait_read(self.k, kv, ("K", t, 0), wg)
                live_p = random.random() >= self.dead
                self.release(self.k, kv, 4)
                for ci in range(1, n):
                    prev = kv.clone()
                    kv.advance()
                    live = random.random() >= self.dead  # tile_mainloop's four orders of (S(ci), P V(ci-1))
                    yield from self.wait_read(self.k, kv, ("K", t, ci), wg)
                    yield from self.turn_wait(wg)
                    if live or live_p:
                        yield from self.wait_read(self.v, prev, ("V", t, ci - 1), wg)
                        self.turn_pass(wg)
                        self.release(self.k, kv, 4)
                        yield lambda: True  # softmax while P V runs (live only)
                    else:
                        self.turn_pass(wg)
                        self.release(self.k, kv, 4)
                        yield from self.wait_read(self.v, prev, ("V", t, ci - 1), wg)
                    self.release(self.v, prev, 4)
                    live_p = live
                self.release(self.q, q, WG)
                q.advance()
                yield from self.wait_read(self.v, kv, ("V", t, n - 1), wg)
                self.release(self.v, kv, 4)
                kv.advance()
            yield lambda: True  # epilogue
            yield from self.pop(ring_c, WG, got)

    def tma_engine(self) -> bool:
        """Complete one random copy in flight; False when none is."""
        if not self.tma:
            return False
        pipe, i, content = self.tma.pop(random.randrange(len(self.tma)))
        pipe.data[i] = content
        pipe.full[i].complete_tx(1)
        return True


def run(tiles: list[int], chunks: dict[int, int], seed: int, pingpong: bool = True, q_tma: bool = True,
        limit: int = 200000, dead: float = 0.0) -> None:
    random.seed(seed)
    simulate(Cta(tiles, chunks, pingpong, q_tma, dead), limit)


def simulate(cta: Cta, limit: int = 200000) -> None:
    """Run the CTA's four agents (producer warp 0, warps 1-3, consumer warpgroups 0 and 1) and its TMA engine in a
    random interleaving until all finish; AssertionError on a deadlock, a wrong read or no end."""
    agents: dict[str, Step] = {"warp0": cta.warp0(), "warps123": cta.warps123(), "wg0": cta.consumer(0),
                               "wg1": cta.consumer(1)}
    waits: dict[str, Callable[[], bool]] = {name: (lambda: True) for name in agents}
    for _ in range(limit):
        ready = [n for n in agents if waits[n]()]
        if not ready and not cta.tma:
            if not agents:
                return
            raise AssertionError(f"deadlock: {sorted(agents)} blocked, no copy in flight")
        if cta.tma and (not ready or random.random() < 0.3):
            cta.tma_engine()
            continue
        name = random.choice(ready)
        try:
            waits[name] = next(agents[name])
        except StopIteration:
            del agents[name], waits[name]
            if not agents and not cta.tma:
                return
    raise AssertionError("did not finish")


@pytest.mark.parametrize("seed", range(40))
def test_random_tile_sequences_finish_without_races(seed):
    rng = random.Random(seed)
    n_tiles = rng.randint(0, 7)
    chunks = {t: rng.choice([0, 1, 1, 2, 3, 5]) for t in range(n_tiles)}
    run(list(range(n_tiles)), chunks, seed, pingpong=seed % 4 != 3, q_tma=seed % 3 != 2)


@pytest.mark.parametrize("seed", range(40))
def test_dropped_row_halves_finish_without_races(seed):
    """Chunks whose drop bits drop a warpgroup's whole row half: that warpgroup skips S, the softmax and / or
    P V (tile_mainloop's four orders), yet keeps every wait, release and turn."""
    rng = random.Random(seed)
    n_tiles = rng.randint(1, 7)
    chunks = {t: rng.choice([1, 2, 3, 5, 8]) for t in range(n_tiles)}
    run(list(range(n_tiles)), chunks, seed, pingpong=seed % 4 != 3, q_tma=seed % 3 != 2, dead=[0.3, 0.7, 1.0][seed % 3])


def test_model_detects_a_missing_release():
    """The model is not vacuous: a consumer that skips one V release must deadlock the producer."""
    cta_cls_release = Cta.release

    def leaky(self, pipe, st, n):
        if pipe is self.v and pipe.data[st.index] == ("V", 1, 0):
            pipe.readers[st.index] -= 1
            return
        cta_cls_release(self, pipe, st, n)

    Cta.release = leaky
    try:
        with pytest.raises(AssertionError, match="deadlock"):
            run([0, 1, 2, 3], {0: 2, 1: 3, 2: 3, 3: 2}, seed=1)
    finally:
        Cta.release = cta_cls_release

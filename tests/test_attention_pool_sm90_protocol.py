"""The synchronization protocol of the Hopper pooling kernel (``kernels/_attention_pool_sm90_impl.py``), modelled on
the CPU with the forward's protocol model (``tests/test_attention_sm90_protocol.py``: mbarriers, pipeline states,
TMA completions as asynchronous events, random interleavings). What differs from the forward, and is modelled
here: no V pipeline (warp 0 issues a tile's K chunks back to back), a ``Q_STAGES``-deep Q ring (the next tile's Q
loads while this tile's chunks run), and per chunk: wait K, the ping-pong turn (named barriers 3 + wg, as the
forward's), the S wgmma, pass the turn, release K right after S. Every run must terminate, every consumer must
read the tile / chunk it expects, and no buffer may be overwritten while it is read. Keep it in step with the
kernel (ring slots, arrival counts, load order)."""

from __future__ import annotations

import random

import pytest

from tests.test_attention_sm90_protocol import Q_THREADS, TILE_RING, WG, Cta, Pipe, State, Step, simulate
from varblock.kernels.attention_pool_sm90 import Q_STAGES, STAGES, THREADS


class PoolCta(Cta):
    """One CTA of the pooling kernel."""

    def __init__(self, tiles: list[int], chunks: dict[int, int], q_tma: bool, head_dim: int):
        super().__init__(tiles, chunks, pingpong=True, q_tma=q_tma)
        self.ring = Pipe(TILE_RING, 32, THREADS - 32)
        self.q = Pipe(Q_STAGES, Q_THREADS, 2 * WG)
        self.stages = STAGES[head_dim]
        self.k = Pipe(self.stages, 1, 8)

    def warp0(self) -> Step:
        ring_p = State(TILE_RING, True)
        ks = State(self.stages, True)
        order = list(self.tiles) + [-1]
        yield from self.push(ring_p, order[0])
        for pos, t in enumerate(order[:-1]):
            yield from self.push(ring_p, order[pos + 1])  # early: the next index
            for ci in range(self.chunks[t]):
                yield from self.load_kv(self.k, ks, ("K", t, ci))
                ks.advance()

    def load_q(self, st: State, t: int, n: int) -> Step:
        """Warps 2-3 into Q stage ``st.index``: cp.async (rows written before the arrive), or a TMA box whose bytes
        warp 2 expects before the 64 arrivals."""
        pq, i, ph = self.q, st.index, st.phase
        yield lambda: pq.empty[i].done(ph)
        assert pq.readers[i] == 0, "Q overwritten while read"
        if self.q_tma:
            pq.full[i].arrive(0, expect_tx=1)
            self.tma.append((pq, i, ("Q", t)))
        else:
            pq.data[i] = ("Q", t)
        pq.full[i].arrive(n)
        st.advance()

    def warps123(self) -> Step:
        ring_c = State(TILE_RING, False)
        q = State(Q_STAGES, True)
        got: list[int] = []
        yield from self.pop(ring_c, 96, got)
        while got[-1] >= 0:
            t = got[-1]
            if self.chunks[t] > 0:
                yield from self.load_q(q, t, Q_THREADS)
            yield from self.pop(ring_c, 96, got)

    def consumer(self, wg: int) -> Step:
        ring_c = State(TILE_RING, False)
        q = State(Q_STAGES, False)
        ks = State(self.stages, False)
        if wg == 0:  # first_turn: warpgroup 0 holds the first turn
            self.bars.arrive(3, WG, 2 * WG)
        got: list[int] = []
        yield from self.pop(ring_c, WG, got)
        while got[-1] >= 0:
            t, n = got[-1], self.chunks[got[-1]]
            if n > 0:
                yield from self.wait_read(self.q, q, ("Q", t), wg)
                for ci in range(n):
                    yield from self.wait_read(self.k, ks, ("K", t, ci), wg)
                    yield from self.turn_wait(wg)
                    self.turn_pass(wg)  # after issuing the S wgmma
                    self.release(self.k, ks, 4)  # after the S wgmma (4 warps of this warpgroup)
                    ks.advance()
                    yield lambda: True  # mask, row maxima, red into the map
                self.release(self.q, q, WG)
                q.advance()
            yield from self.pop(ring_c, WG, got)


def run(tiles: list[int], chunks: dict[int, int], seed: int, q_tma: bool = True, head_dim: int = 128,
        limit: int = 200000) -> None:
    random.seed(seed)
    simulate(PoolCta(tiles, chunks, q_tma, head_dim), limit)


@pytest.mark.parametrize("seed", range(40))
def test_random_tile_sequences_finish_without_races(seed):
    rng = random.Random(seed)
    n_tiles = rng.randint(0, 9)
    chunks = {t: rng.choice([0, 1, 1, 2, 3, 7]) for t in range(n_tiles)}
    run(list(range(n_tiles)), chunks, seed, q_tma=seed % 3 != 2, head_dim=(64, 128)[seed % 2])


def test_model_detects_a_missing_q_release(monkeypatch):
    """The model is not vacuous: a consumer that keeps one Q stage deadlocks the Q producer two tiles later."""
    release = PoolCta.release

    def leaky(self, pipe, st, n):
        if pipe is self.q and pipe.data[st.index] == ("Q", 0):
            pipe.readers[st.index] -= 1
            return
        release(self, pipe, st, n)

    monkeypatch.setattr(PoolCta, "release", leaky)
    with pytest.raises(AssertionError, match="deadlock"):
        run([0, 1, 2, 3], {0: 2, 1: 1, 2: 3, 3: 2}, seed=1)


def test_model_detects_a_skipped_turn(monkeypatch):
    """Turns are modelled: a warpgroup that never passes its turn deadlocks the other one."""
    monkeypatch.setattr(PoolCta, "turn_pass", lambda self, wg: None)
    with pytest.raises(AssertionError, match="deadlock"):
        run([0, 1], {0: 2, 1: 1}, seed=2)

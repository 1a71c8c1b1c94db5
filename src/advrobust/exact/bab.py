"""Complete verification by beta-CROWN branch and bound on ReLU splits.

Bunel et al. 2018/2020, "A unified view of piecewise linear neural network verification" and
"Branch and bound for piecewise linear neural network verification"; Xu et al. 2021
(alpha-CROWN, "Fast and complete"); Wang et al. 2021 ("Beta-CROWN"). The root is bounded by
alpha-CROWN with optimised intermediate bounds (:func:`~advrobust.relax.alpha_crown.
alpha_crown`); those intermediate bounds hold in every sub-domain. A *domain* fixes the sign of
some unstable ReLUs (``z >= 0`` or ``z <= 0``); its bound is beta-CROWN (:mod:`advrobust.exact.
_beta`): the split constraints enter the bound through optimised Lagrange multipliers, with the
lower slopes optimised per domain, both warm-started from the parent, domains bounded in batches.
All open spec rows of a sample are searched together: a domain belongs to one row, the batch
mixes rows (each open row's lowest domains get an equal share of it, then the lowest of any
row: best-first), so no row waits behind one that stalls. The union of the domains always
covers the threat set, so the minimum of their bounds is a sound lower bound at every moment. A
domain whose bound clears the verification tolerance is closed; the others are split on the
neuron chosen by BaBSR or filtered smart branching (:mod:`advrobust.exact._branching`). A domain
with no unstable neuron left is a linear region: its exact minimum is an LP (HiGHS), which
makes the search complete. The linear bound's minimiser of every domain (a corner of the box
for linf) and every LP point are re-evaluated through the network as counterexample candidates.

Unlike the MILP, a row's search stops once its sign is decided, so on robust rows the lower
bound is a proof (above the tolerance), not the exact minimum.

This module holds the verifier and its per-sample driver; the search loop over a sample's rows
is :mod:`advrobust.exact._search`, its counterexample candidates and LP / MILP solves
:mod:`advrobust.exact._candidates`, the domains' bounds :mod:`advrobust.exact._beta` (passes in
:mod:`advrobust.exact._beta_pass`, splits in :mod:`advrobust.exact._branching`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from advrobust.core._validation import check_bool, check_float, check_int
from advrobust.core.memory import parse_size
from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError, InvalidThreatModelError, MemoryLimitError
from advrobust.exact._candidates import Row as _Row
from advrobust.exact._candidates import decide_by_milp
from advrobust.exact._domains import _CLOSE
from advrobust.exact._fork import SharedFlag, can_fork, memory_share
from advrobust.exact._search import RowSearch as _RowSearch
from advrobust.exact._search import search_dealt
from advrobust.exact.input_split import input_split
from advrobust.exact.refine import Refinement, refinable, refine_bounds
from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.relax.alpha_crown import AlphaResult, alpha_crown, check_branchable
from advrobust.relax.base import Bounder, Bounds
from advrobust.relax.crown import crown_layer_bounds, crown_lower
from advrobust.relax.dag import graph_crown_bounds
from advrobust.relax.ibp import LayerBounds

__all__ = ["BaB"]

#: Candidates of ``branching="fsb"`` (see :class:`BaB`).
_FSB_K = 20

#: Share of the time left that a search has before refinement is tried (see :class:`BaB`
#: ``refine``), and in a sample's last refinement round (no round after it could be as long:
#: at a short limit its only one): VNN-COMP 2022 mnist_fc 256x4 / 256x6 at 30 s decided
#: nothing in the probe but one counterexample (256x6 ``prop_1_0.05``, at 4.6 s; still found
#: with 0.1) and nothing in the search after the refinement: every proof there comes from the
#: refined root, which the refinement's time decides (bench/RESULTS.md, issue 11, session 16);
#: at 300 s the same holds for the third round (session 26).
_PROBE = 0.2
_PROBE_LAST = 0.1

#: Share of a round's span left after the probe search that the refinement takes (see
#: :class:`BaB` ``refine``) on chains with more than one refinable layer, and with one: what a
#: refinement gains grows faster than its time where the layers' gains compound (VNN-COMP 2022
#: mnist_fc 256x6 ``prop_9_0.03`` at 30 s: the refined root at -28.7 after 8.3 s, -3.6 after
#: 14 s), while one layer's gain levels off sooner and the search after it needs the time
#: (2021 256x2 ``prop_1_0.03`` at 120 s: decided in 27 s with 0.5, 34 s or a timeout with 0.85).
_REFINE_DEEP = 0.85
_REFINE_ONE = 0.5
#: ... and on chains with more than one refinable layer in a sample's only refinement (its
#: first round is its last: see ``_PROBE_LAST``).
_REFINE_DEEP_ONLY = 0.95

#: Most refinement rounds per sample (see :meth:`BaB._search`), a cap for long limits: at 300 s
#: the rounds span 24, 72 and the ~205 s left (a fourth would be shorter than the third: none);
#: VNN-COMP 2022 256x4 ``prop_4_0.05``, decided by a fourth round of 0.5-share refinements
#: (252.5 s, session 11), is decided by the third now (269 s).
_ROUNDS = 4

#: Seconds a first round of probe search, refinement and MILP try may span, and the factor by
#: which each further round's span grows (see :meth:`BaB._search`): a long time limit does not
#: delay the first refined root (at 300 s, shares of the whole limit put it at ~175 s, where
#: a 30-s limit has it at ~22 s), and each next round is longer (:func:`_another_round`).
_ROUND_SECONDS = 24.0
_ROUND_GROWTH = 3.0

#: Inputs of at most this many values are split as boxes first (``BaB(input_split=None)``).
INPUT_SPLIT = 16

#: Share of a sample's time the input splitting may take (inputs of at most ``input_split``
#: values) before the ReLU splits take the rows it leaves open (their LP leaves finish tiny
#: networks; on ACAS Xu they decide nothing, and the whole time to the input splits decided
#: one more of 27 instances left open at 30 s: bench/RESULTS.md, issue 11, session 21).
_INPUT_SHARE = 0.75

#: Most unstable ReLUs (all layers) under the refined bounds for the MILP try (see
#: :class:`BaB` ``milp``): on VNN-COMP 2022 256x4, 109 were decided in 1.3 s (``prop_10_0.05``),
#: 150 / 237 stayed open after 60 s (``prop_7_0.05`` / ``prop_6_0.03``).
_MILP_UNSTABLE = 128


class BaB(Bounder):
    """Complete verifier: beta-CROWN branch and bound on ReLU splits.

    Runs on chains and on graphs (residual additions, concatenations, reshapes, convolutions,
    batch norm, average pooling) whose only nonlinear nodes are ReLUs; any other nonlinear node
    (sigmoid, tanh, max pooling, LeakyReLU) is refused with an UnsupportedLayerError naming it.

    Each spec row not already proved at the root (alpha-CROWN) is searched until its sign is
    decided (all sub-domains bounded above the tolerance: proved; a point of the set below
    zero: broken) or the time runs out (UNKNOWN, with the lowest open sub-domain bound as the
    lower bound). linf threats only: on l1 balls the split constraints matter so much that the
    search degenerates into one LP per linear region (use the MILP).

    Args:
        time_limit: seconds per sample (all its rows together, the root's alpha-CROWN
            included).
        batch_size: parent domains split per step (their children bounded in one batch).
        max_domains: open sub-domains kept before the search gives up (None, default: as
            many as half of ``memory_limit`` holds). Near the limit the search splits the
            domains closest to a proof first, so that their children close and free memory.
        max_leaves: linear regions solved by LP before the row is handed to the big-M MILP
            (on the root's alpha-CROWN bounds) for the rest of the time.
        early_stop: stop a sample at its first row with a counterexample.
        alpha_steps: Adam steps of the root's alpha-CROWN.
        intermediate: let the root's alpha-CROWN optimise the intermediate bounds too.
        beta_steps: Adam steps on slopes and multipliers per batch of domains (5: on the
            mnist_fc 256x2 instances BaB decides, 25-30 % less time than 10 for ~15 % more
            domains; bench/RESULTS.md, issue 11).
        branching: ``"babsr"`` or ``"fsb"`` (filtered smart branching: the best of the top 20
            BaBSR candidates by one bound pass each), or an int ``k`` (FSB over the top
            ``k``). 20 rather than 3: a quarter to a half of the domains per second, but splits
            good enough to decide what 3 never did in the same time (VNN-COMP 2021 256x2
            ``prop_1/3_0.03``, all of the ``small`` MNIST benchmark); on near-closed rows
            the volume of 3 can win (2022 256x4 ``prop_3_0.05``). bench/RESULTS.md, issue 11,
            session 8.
        attack_steps: signed-gradient steps per batch from the box corner of each open row's
            lowest domain (0: only the corners are evaluated).
        domain_bounds: re-bound each domain's intermediate layers above its splits (CROWN with
            the root's optimised slopes, under the split-clamped bounds below). Off: on the
            mnist_fc 256x4 instances it costs 2-2.5x per domain for no better bound
            (bench/RESULTS.md, issue 11, session 4).
        keep_state: each domain keeps its Adam state (moments and step counts of its slopes
            and multipliers) and its children continue it, instead of a fresh optimiser per
            batch (bench/RESULTS.md, issue 11, developer babadam).
        refine: on chains with two ReLU layers or more, when the search has not decided every row in
            a fifth of a round's span (the time left, at most 24 s for the first round, three times
            more for each next one; a tenth where no round after this one could be as long, e.g. the
            first at 30 s, the third at 300 s), this share of the span left goes to tightening the
            intermediate bounds by branch and bound on the neurons themselves, layer by layer
            (:mod:`advrobust.exact.refine`; layers of up to 1,024 neurons), and the open rows are
            searched again from the refined root; up to four rounds, each as long as the one before
            at least (0: off). None (default): 0.85 where more than one layer is refined, 0.5 where
            one is: the layers' gains compound, and at 30 s VNN-COMP 2022 mnist_fc 256x4 / 256x6
            decide 24 / 16 instances with 0.85 (and no round shorter than the one before) where 0.5
            decided 22 / 16 (bench/RESULTS.md, issue 11, session 12); 0.95 where more than one layer
            is refined and no round after the first could be as long (session 16).
        milp: after a refinement round that leaves at most 128 unstable ReLUs, this share of
            the round's span left goes to the big-M MILP (HiGHS) on the refined bounds, row
            after row from the one closest to a proof, each solve stopped once the row's sign
            is decided, until a row stays undecided: with few unstable neurons HiGHS's cuts decide
            a near-closed row in seconds where the search needs minutes (VNN-COMP 2022
            256x4 ``prop_10_0.05``: 1.3 s after 25 s of refinement, against ~150 s of
            search; bench/RESULTS.md, issue 11, session 10). 0: off.
        memory_limit: bytes (or a size such as ``"8G"``) the root's alpha-CROWN and each
            batch of domains may take, estimated before allocating (default: half the
            available memory, :func:`~advrobust.core.memory.default_memory_limit`). What does
            not fit is done more cheaply (fewer optimised intermediate nodes, smaller
            batches); a sample whose root alone does not fit keeps its CROWN bounds, with a
            warning — never an out-of-memory kill.
        workers: processes (cores) that share each search, this one and ``workers - 1``
            forked copies of it, one torch thread each, which split ``memory_limit`` (Linux;
            elsewhere 1): the property's open domains are dealt to them, and dealt again
            whenever one has closed all of its (no core idles while another searches the
            last hard row); a refinement's neuron rows are dealt to them, each searching its
            rows for the whole time. A copy that fails or answers late proves nothing for the
            rows it held. One VNN-COMP mnist_fc instance at a time on 2 cores, 2 workers left
            the open 256x6 rows at 30 s 4.7-14x nearer a proof than one core, the 256x4 ones
            as near as 2 torch threads did (bench/RESULTS.md, issue 11, session 19); dealing
            the property's domains again brought a 60-s search's answer from 35.1 s to 20.1 s
            (session 24).
        input_split: inputs of at most this many values (None: ``INPUT_SPLIT`` = 16; 0: never)
            are first searched by branch and bound on the input box
            (:mod:`advrobust.exact.input_split`: CROWN on batches of sub-boxes, input-domain
            clipping) for 3/4 of the time; the ReLU splits take the rows it leaves open. On
            VNN-COMP 2021 ACAS Xu (5 inputs) it decides 170 of 186 instances at 30 s, where
            ReLU splits alone could not prove property 1 on N1,1 in 30 s (bench/RESULTS.md,
            issue 11, session 21).
    """

    def __init__(self, *, time_limit: float = 60.0, batch_size: int = 256,
                 max_domains: int | None = None, max_leaves: int = 8,
                 early_stop: bool = True, alpha_steps: int = 20, intermediate: bool = True,
                 beta_steps: int = 5, branching: str | int = "fsb",
                 attack_steps: int = 10, domain_bounds: bool = False,
                 keep_state: bool = True, refine: float | None = None, milp: float = 0.25,
                 memory_limit: int | str | None = None, workers: int = 1,
                 input_split: int | None = None) -> None:
        self.time_limit = check_float(time_limit, "time_limit", "BaB", low=0.0, low_open=True,
                                      allow_inf=True)
        self.batch_size = check_int(batch_size, "batch_size", "BaB", low=1)
        self.max_domains = None if max_domains is None else check_int(
            max_domains, "max_domains", "BaB", low=1)
        self.max_leaves = check_int(max_leaves, "max_leaves", "BaB", low=0)
        self.early_stop = check_bool(early_stop, "early_stop", "BaB")
        self.input_split = INPUT_SPLIT if input_split is None else check_int(
            input_split, "input_split", "BaB", low=0)
        self.alpha_steps = check_int(alpha_steps, "alpha_steps", "BaB", low=0)
        self.intermediate = check_bool(intermediate, "intermediate", "BaB")
        self.beta_steps = check_int(beta_steps, "beta_steps", "BaB", low=0)
        self.attack_steps = check_int(attack_steps, "attack_steps", "BaB", low=0)
        self.domain_bounds = check_bool(domain_bounds, "domain_bounds", "BaB")
        self.keep_state = check_bool(keep_state, "keep_state", "BaB")
        self.refine = None if refine is None else check_float(refine, "refine", "BaB", low=0.0,
                                                               high=1.0)
        self.milp = check_float(milp, "milp", "BaB", low=0.0, high=1.0)
        self.memory_limit = None if memory_limit is None else parse_size(
            memory_limit, "BaB memory_limit")
        self.workers = check_int(workers, "workers", "BaB", low=1)
        if branching not in ("babsr", "fsb") and not (
                isinstance(branching, int) and not isinstance(branching, bool) and branching >= 1):
            raise InvalidParameterError(
                "BaB: 'branching' must be 'babsr', 'fsb' or an int >= 1 (FSB candidates). "
                f"Got {branching!r} instead.")
        self.branching = branching

    reuses_layer_bounds = True

    @property
    def _fsb_k(self) -> int:
        return {"babsr": 1, "fsb": _FSB_K}.get(self.branching, self.branching)  # type: ignore[arg-type]

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec, *,
                     layer_bounds: LayerBounds | None = None) -> Bounds:
        return self._bound(graph, x, threat, spec, layer_bounds=layer_bounds)

    def _bound(self, network: Network | Graph, x: Tensor,  # type: ignore[override]
               threat: LpBall, spec: Spec, *,
               layer_bounds: LayerBounds | None = None) -> Bounds:
        if threat.norm is not Norm.LINF:
            raise InvalidThreatModelError(
                f"BaB supports the norm 'linf' only. Got {threat.norm.value!r} instead; use "
                "MILP for l1 and CROWN for l2.")
        check_branchable(network)
        with torch.no_grad():
            # one CROWN pass (or the caller's): the start of every sample's alpha-CROWN root
            layers = layer_bounds if layer_bounds is not None else (
                graph_crown_bounds(network, x, threat, rounding=True)
                if isinstance(network, Graph) else
                crown_layer_bounds(network, x, threat, rounding=True))
            crown = crown_lower(network, x, threat, spec.C, spec.d, bounds=layers,
                                rounding=True)
            clean = spec.apply(network.forward(x))
        lower = crown.clone()
        cand = x.unsqueeze(1).repeat_interleave(spec.num_rows, 1).clone()
        samples = []
        # per sample: its root's layer bounds (alpha-CROWN's, refined or not), its refinement
        roots: dict[str, dict[int, Any]] = {"root_bounds": {}, "refinements": {}}
        for s in range(x.shape[0]):
            root = [(lo[s:s + 1], hi[s:s + 1]) for lo, hi in layers]
            samples.append(self._sample(network, x[s:s + 1], threat, spec, s, crown[s],
                                        clean[s], lower, cand, root, roots))
        return Bounds(lower, candidates=cand, stats={"crown": crown, "samples": samples,
                                                     **roots})

    def _search(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                d: Tensor, alpha: AlphaResult, deadline: float
                ) -> tuple[Tensor, list[Any], int, Refinement | None]:
        """Search the rows from the root ``alpha``. Where refinement may help, in rounds: search
        for ``_PROBE`` of the round's span (``_PROBE_LAST`` where no round after this one could
        be as long: the sample's last refinement), refine the rows left open, search them again
        from the refined root, ...; a round spans the time left, at most ``_ROUND_SECONDS`` times
        ``_ROUND_GROWTH`` to the round's number; the last search runs to the deadline (after
        ``_ROUNDS`` refinements, one that refined nothing, or one after which too little time
        is left for a round as long, :func:`_another_round`). Returns per row its sound lower
        bound and search state, the linear regions solved, and the refinements (None if none
        ran)."""
        rows = torch.arange(c.shape[1])
        values = torch.full((c.shape[1],), -math.inf, dtype=torch.float64)
        states: list[Any] = [None] * c.shape[1]
        leaves, done = 0, Refinement(alpha)
        layers = refinable(network)
        share = self.refine if self.refine is not None else \
            _REFINE_DEEP if len(layers) > 1 else _REFINE_ONE
        more = share > 0 and bool(layers)
        for n in range(_ROUNDS + 1):
            more = more and n < _ROUNDS
            now = time.perf_counter()
            until = min(deadline, now + _ROUND_SECONDS * _ROUND_GROWTH ** n)  # the round's span
            # the sample's last refinement: no round after this one could be as long (at a
            # short limit its only one), or the rounds' cap
            last = more and (n == _ROUNDS - 1
                             or not _another_round(n, until - now, until, deadline))
            only = last and n == 0
            found, found_states, found_leaves = self._run_rows(
                network, x0, threat, c[0, rows], d[0, rows], done.alpha,
                now + (_PROBE_LAST if last else _PROBE) * (until - now) if more else deadline)
            leaves += found_leaves
            for k, r in enumerate(rows.tolist()):
                values[r] = max(float(values[r]), float(found[k]))
                found_states[k].domains += 0 if states[r] is None else states[r].domains
                states[r] = found_states[k]
            todo = [r for r in rows.tolist() if values[r] <= _CLOSE and states[r].best_value >= 0]
            broken = any(st.best_value < 0 for st in states)
            if not more or not todo or (broken and self.early_stop) or \
                    deadline - time.perf_counter() < 1.0:
                break
            refined = len(done.layers)
            deep_only = only and self.refine is None and len(layers) > 1
            rows = self._refine(network, x0, threat, c, d, rows, todo, done, until,
                                _REFINE_DEEP_ONLY if deep_only else share, only)
            grew = len(done.layers) > refined
            more = grew and _another_round(n, until - now, time.perf_counter(), deadline)
            if grew and self.milp > 0 and \
                    _unstable(network, done.alpha.bounds) <= _MILP_UNSTABLE:
                rows = self._milp_try(network, x0, threat, c, d, rows, done, values, states,
                                      until)
                if not rows.numel() or (self.early_stop and any(
                        st.best_value < 0 for st in states)):
                    break
        return values, states, leaves, done if done.layers else None

    @staticmethod
    def _linear_rows(network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                     d: Tensor, alpha: AlphaResult, until: float
                     ) -> tuple[Tensor, list[Any], int]:
        """:meth:`_run_rows` on a network without ReLUs: every row is decided by the LP of its
        one linear region (the root bound kept where the LP proves less)."""
        states = [_Row() for _ in range(c.shape[0])]
        tried = decide_by_milp(network, x0, threat, c, d, alpha.bounds,
                               list(range(c.shape[0])), states, until)
        found = torch.maximum(alpha.lower[0].to(torch.float64), torch.tensor(
            [tried.get(k, -math.inf) for k in range(c.shape[0])], dtype=torch.float64))
        for k, state in enumerate(states):
            state.domains = 1
            state.status = "falsified" if state.best_value < 0 else \
                "verified" if float(found[k]) > _CLOSE else \
                "at tolerance" if k in tried else "time_limit"
        return found, states, 1

    def _run_rows(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                  d: Tensor, alpha: AlphaResult, until: float
                  ) -> tuple[Tensor, list[Any], int]:
        """Search rows ``c``, ``d`` (R, outputs), (R,) from the root ``alpha`` (its rows) until
        ``until``: sound lower bounds (R,), row states, linear regions solved. With ``workers``
        > 1 the open domains are dealt to that many processes (this one and forked copies,
        :func:`~advrobust.exact._search.search_dealt`), and dealt again whenever one has closed
        all of its (with ``early_stop``, a counterexample found in any of them stops all,
        through a :class:`~advrobust.exact._fork.SharedFlag`); the rows of a copy that fails
        or answers late end at ``-inf``, unknown."""
        if not check_branchable(network):  # no ReLU to split: the root is one linear region
            return self._linear_rows(network, x0, threat, c, d, alpha, until)
        if self.workers <= 1 or not can_fork():
            search = _RowSearch(network, x0, threat, c, d, self, alpha)
            found, rows = search.run(until, stop_on_counterexample=self.early_stop)
            return found, list(rows), search.leaves
        # the processes share the memory: each one's open domains and batches take its part
        settings = copy.copy(self)
        settings.memory_limit = memory_share(self.memory_limit, self.workers)
        search = _RowSearch(network, x0, threat, c, d, settings, alpha, SharedFlag())
        found, rows, _ = search_dealt(search, until, self.early_stop, self.workers)
        return found, list(rows), search.leaves

    def _milp_try(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                  d: Tensor, rows: Tensor, done: Refinement, values: Tensor, states: list[Any],
                  deadline: float) -> Tensor:
        """The big-M MILP on the refined bounds (far fewer unstable neurons than the root's)
        for ``milp`` of the time left before ``deadline`` (the round's end), on the open
        ``rows`` (those of ``done.alpha``), closest to a proof first; returns the rows still
        open (``done.alpha`` cut to them)."""
        low = done.alpha.lower[0]
        # rows the refined root proves already are left to the search (it closes them at once)
        order = [r for _, r in sorted(((v, r) for r, v in zip(rows.tolist(), low.tolist(),
                                                                strict=True) if v <= _CLOSE),
                                      reverse=True)]
        now = time.perf_counter()
        tried = decide_by_milp(network, x0, threat, c[0], d[0], done.alpha.bounds, order, states,
                               now + self.milp * (deadline - now))
        for r, bound in tried.items():
            values[r] = max(float(values[r]), bound)
            if states[r].best_value < 0:
                states[r].status = "falsified"
            elif bound > _CLOSE:
                states[r].status = "verified"
        keep = torch.tensor([k for k, r in enumerate(rows.tolist())
                             if values[r] <= _CLOSE and states[r].best_value >= 0],
                            dtype=torch.long)
        if keep.numel() < rows.numel():
            done.alpha = dataclasses.replace(
                done.alpha, lower=done.alpha.lower[:, keep],
                alphas={j: v[:, keep] for j, v in done.alpha.alphas.items()})
        return rows[keep] if keep.numel() else rows[:0]

    def _refine(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                d: Tensor, rows: Tensor, todo: list[int], done: Refinement,
                deadline: float, share: float, only: bool = False) -> Tensor:
        """Refine the root of the open rows ``todo`` (of ``rows``, those of ``done.alpha``) for
        ``share`` of the time left before ``deadline`` (the round's end); ``done`` accumulates
        it (``only``: the sample's only refinement, :func:`~advrobust.exact.refine.
        refine_bounds`). Returns the rows of the new root (``rows`` if nothing was refined)."""
        assert isinstance(network, Network)  # refinable
        at = torch.tensor([rows.tolist().index(r) for r in todo])
        root = dataclasses.replace(done.alpha, lower=done.alpha.lower[:, at])
        now = time.perf_counter()
        new = refine_bounds(network, x0, threat, c[:, todo], d[:, todo], root, self,
                            deadline=now + share * (deadline - now),
                            alpha_steps=self.alpha_steps, only=only)
        if not new.layers:  # nothing refined: search the same rows again, to the deadline
            return rows
        done.alpha, done.seconds = new.alpha, done.seconds + new.seconds
        done.layers += new.layers
        return torch.tensor(todo)

    def _split_inputs(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                      d: Tensor, s: int, todo: list[int], lower: Tensor, cand: Tensor,
                      until: float) -> list[dict[str, Any]]:
        """Sample ``s``'s open rows ``todo`` by branch and bound on its input box
        (:func:`~advrobust.exact.input_split.input_split`) until ``until``."""
        start = time.perf_counter()
        lo, hi = threat.input_bounds(x0)
        found = input_split(network, lo, hi, c[0], d[0], until, early_stop=self.early_stop)
        seconds = time.perf_counter() - start
        log = []
        for j, value, row in zip(todo, found.lower.tolist(), found.rows, strict=True):
            lower[s, j] = max(float(lower[s, j]), value)
            if row.best_point is not None:
                cand[s, j] = row.best_point.reshape(cand.shape[2:]).to(cand)
            log.append({"row": j, "status": row.status, "split": "input", "domains": row.domains,
                        "open": found.open, "lower": value, "best": row.best_value,
                        "seconds": seconds})
        return log

    def _sample(self, network: Network | Graph, x0: Tensor, threat: LpBall, spec: Spec, s: int,
                crown: Tensor, clean: Tensor, lower: Tensor, cand: Tensor, root: Any,
                roots: dict[str, dict[int, Any]]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        deadline = start + self.time_limit
        if bool((clean < 0).any()) and self.early_stop:
            return []  # the clean point is its own counterexample
        todo = [j for j in clean.argsort().tolist() if float(crown[j]) <= VERIFY_TOLERANCE]
        if not todo:
            return []
        rows = torch.tensor(todo, device=x0.device)
        c, d = spec.C[s, rows].unsqueeze(0), spec.d[s, rows].unsqueeze(0)
        split_log: list[dict[str, Any]] = []
        if x0[0].numel() <= self.input_split:  # few inputs: split the box first
            split_log = self._split_inputs(network, x0, threat, c, d, s, todo, lower, cand,
                                           start + _INPUT_SHARE * self.time_limit)
            falsified = any(entry["best"] < 0 for entry in split_log)
            # rows whose search ended (proved, or the minimum found within the tolerance) are
            # done; those the time or the box count stopped go on
            todo = [e["row"] for e in split_log if e["status"] in ("time_limit", "domain_limit")]
            if not todo or (falsified and self.early_stop) or \
                    time.perf_counter() >= deadline:
                return split_log
            # what it leaves open goes to the ReLU splits (complete: linear regions by LP)
            rows = torch.tensor(todo, device=x0.device)
            c, d = spec.C[s, rows].unsqueeze(0), spec.d[s, rows].unsqueeze(0)
        # the root: alpha-CROWN (at most a third of the time), its bounds hold in every domain
        try:
            alpha = alpha_crown(network, x0, threat, c, d, steps=self.alpha_steps,
                                intermediate=self.intermediate, bounds=root,
                                deadline=start + self.time_limit / 3, stop_above=_CLOSE,
                                memory_limit=self.memory_limit)
        except MemoryLimitError as err:
            warnings.warn(f"BaB: sample {s} keeps its CROWN bounds: {err}", UserWarning,
                          stacklevel=2)
            return []
        alpha.lower = torch.maximum(alpha.lower, crown[rows].unsqueeze(0))
        # sound on the whole set: later stages may start from them
        roots["root_bounds"][s] = alpha.bounds
        values, states, leaves, refined = self._search(network, x0, threat, c, d, alpha,
                                                       deadline)
        if refined is not None:
            roots["refinements"][s] = refined
            roots["root_bounds"][s] = refined.alpha.bounds
        seconds = time.perf_counter() - start
        log = []
        for j, value, row, root_lower in zip(todo, values.tolist(), states,
                                             alpha.lower[0].tolist(), strict=True):
            lower[s, j] = max(float(lower[s, j]), value)
            if row.best_point is not None:
                cand[s, j] = row.best_point.reshape(cand.shape[2:]).to(cand)
            log.append({"row": j, "status": row.status, **row.log, "domains": row.domains,
                        "leaves": leaves, "alpha": root_lower, "lower": value,
                        "best": row.best_value, "seconds": seconds,
                        "refine_passes": 0 if refined is None else len(refined.layers),
                        "refine_seconds": 0.0 if refined is None else refined.seconds})
        return split_log + log


def _another_round(n: int, span: float, now: float, deadline: float) -> bool:
    """Whether round ``n + 1`` starts at ``now``, after round ``n`` spanned ``span`` seconds:
    only if it can span as long (its span is the time left, at most ``_ROUND_SECONDS`` times
    ``_ROUND_GROWTH`` to its number). What a refinement gains grows faster than its time: at
    30 s a second round of ~3 s after one of ~22 s tightened nothing on VNN-COMP mnist_fc 256x4
    / 256x6, while those seconds of search from the refined root can still close a row."""
    return min(deadline, now + _ROUND_SECONDS * _ROUND_GROWTH ** (n + 1)) - now >= span


def _unstable(network: Network | Graph, bounds: LayerBounds) -> float:
    """Unstable ReLUs of a chain under ``bounds`` (all layers; inf for a graph, which is
    never refined)."""
    if not isinstance(network, Network):
        return math.inf
    return sum(int(((bounds[k][0] < 0) & (bounds[k][1] > 0)).sum())
               for k in network.relu_indices)

"""The branch-and-bound open list: in-place drops and appends keep exactly the domains a plain
list would (a lost domain would be a wrong "verified")."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advrobust.exact._domains import Domains, OpenList, OptState


def _domains(ids: list[int], with_state: bool) -> Domains:
    """Domains whose every tensor encodes its id (so a mixed-up slot shows)."""
    v = torch.tensor(ids, dtype=torch.float32)
    per = {0: v.unsqueeze(1).repeat(1, 3), 2: -v.unsqueeze(1).repeat(1, 5)}
    state = None
    if with_state:
        state = OptState(*[{j: t.clone() + k for j, t in per.items()} for k in range(5)],
                         v.clone())
    return Domains({j: (t.long() % 3 - 1).to(torch.int8) for j, t in per.items()},
                   {j: t.clone() for j, t in per.items()},
                   {j: 2 * t for j, t in per.items()},
                   v.double(), v.unsqueeze(1).repeat(1, 8), torch.tensor(ids) % 4,
                   v.unsqueeze(1).repeat(1, 8), state)


def _ids(dom: Domains) -> list[int]:
    ids = dom.lower.long().tolist()
    # every tensor of a domain still belongs to that domain
    expect = _domains(ids, dom.state is not None)
    for got, want in zip(dom.tensors(), expect.tensors(), strict=True):
        assert torch.equal(got, want)
    return ids


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(0, 2 ** 16)),
                    min_size=1, max_size=25),
       start=st.integers(1, 6), with_state=st.booleans(),
       most=st.one_of(st.none(), st.integers(1, 60)))
def test_open_list_keeps_exactly_the_domains_of_a_plain_list(
        ops: list[tuple[bool, int, int]], start: int, with_state: bool, most: int | None
) -> None:
    reference = list(range(start))
    open_ = OpenList(_domains(reference, with_state), most=most)
    fresh, peak = start, start
    for add, k, seed in ops:
        if add:
            new = list(range(fresh, fresh + k))
            fresh += k
            open_.add(_domains(new, with_state))
            reference += new
        elif len(open_):
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(open_), generator=gen)[:min(k, len(open_))]
            gone = [_ids(open_.view)[i] for i in idx.tolist()]
            taken = open_.take(idx)
            assert _ids(taken) == gone  # copies, untouched by the drop below
            open_.drop(idx)
            assert _ids(taken) == gone
            reference = [i for i in reference if i not in set(gone)]
        assert len(open_) == len(reference)
        assert sorted(_ids(open_.view)) == sorted(reference)
        peak = max(peak, len(open_))
        storage = open_._buf.lower.shape[0]  # grows past ``most`` only as far as it must
        assert most is None or storage <= max(most, peak)

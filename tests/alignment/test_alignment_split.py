"""The global graph's six problems split over processes: the same matchings, loss and gradients as
one process solving all six (2 processes over gloo)."""

from dataclasses import dataclass, field

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from conftest import free_port

from exgramed_plugin.alignment import MultiGraphAlignment, ProblemSplit, blackbox

NODES, WIDTH = 40, 16


@pytest.mark.parametrize("world", range(1, 9))
def test_each_problem_has_one_process_and_the_blocks_are_even(world):
    blocks = [ProblemSplit(rank, world).owned(6) for rank in range(world)]
    solved = sorted(p for block in blocks for p in block)
    assert solved == list(range(6))
    assert max(len(block) for block in blocks) == -(-6 // world)
    assert all(block.step == 1 for block in blocks)  # contiguous: the costs are views, not copies


def _step(split):
    """One MGA forward + backward on fixed nodes and weights; what every process must agree on."""
    generator = torch.Generator().manual_seed(3)
    mga = MultiGraphAlignment(in_features=WIDTH, dropout=0.0)
    for parameter in mga.parameters():
        parameter.data = 0.3 * torch.randn(parameter.shape, generator=generator)
    nodes = [torch.randn(NODES, WIDTH, generator=generator, requires_grad=True) for _ in range(3)]
    out = mga(*nodes, generator=torch.Generator().manual_seed(11), split=split)
    out.loss.backward()
    return {"matchings": out.matchings, "loss": out.loss.detach(),
            "grads": [z.grad for z in nodes] + [p.grad for p in mga.parameters()]}


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    solved_batches = []
    solve = blackbox.solve_prepared

    def counting_solve(problem, *args, **kwargs):
        solved_batches.append(problem.shape[0])
        return solve(problem, *args, **kwargs)

    blackbox.solve_prepared = counting_solve
    result = _step(ProblemSplit.over_processes())
    torch.save({**result, "solved_batches": solved_batches}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@dataclass(frozen=True)
class _AnswersFromOthers(ProblemSplit):
    """A process that owns no problem (rank 6 of 7): every answer arrives from the others, here from a
    recording of one process solving all six."""

    arriving: list = field(default_factory=list)

    def share(self, owned_matching, batch, device):
        assert owned_matching.shape[0] == 0
        return self.arriving.pop(0)


def test_a_process_without_problems_gets_the_loss_and_gradients_of_the_batch(monkeypatch):
    recorded = []
    solve = blackbox.solve_prepared

    def recording_solve(problem, *args, **kwargs):
        recorded.append(solve(problem, *args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(blackbox, "solve_prepared", recording_solve)
    alone = _step(None)
    monkeypatch.setattr(blackbox, "solve_prepared", solve)
    idle = _step(_AnswersFromOthers(rank=6, world=7, arriving=list(recorded)))
    assert len(recorded) == 2 and torch.equal(idle["loss"], alone["loss"])
    for found, expected in zip(idle["grads"], alone["grads"]):
        assert torch.equal(found, expected)


@pytest.mark.distributed
def test_two_processes_splitting_the_problems_equal_one_process_solving_all(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    alone = _step(None)
    assert alone["loss"] > 0 and any(float(g.abs().sum()) > 0 for g in alone["grads"][:3])
    for rank in range(2):
        split = torch.load(tmp_path / f"rank{rank}.pt")
        assert split["solved_batches"] == [3, 3]  # its block of the six, in forward and in backward
        assert torch.equal(split["matchings"], alone["matchings"])
        assert torch.equal(split["loss"], alone["loss"])
        for found, expected in zip(split["grads"], alone["grads"]):
            assert torch.equal(found, expected)

"""Data-parallel training on 2 CPU ranks (gloo): equivalence, lockstep weights, the
communication hook, and the torchrun command line end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from test_prepare import batches, representable, small_cnn
from test_runs import comparable, final_state, tiny_digits

import lowprec as lp
from lowprec import cli
from lowprec.study.runs import CONFIG, STATUS, RunError, RunSpec, train_run
from lowprec.train import distributed
from lowprec.train import prepare as training
from lowprec.train.distributed import World

WORLD = 2
SR_COMM = lp.recipes.get("fp12_sr").replace(
    name="fp12_sr_comm", grad_comm=lp.QuantSpec("fp8_e5m2", "stochastic"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.launched(True, "cpu") as world:
        fn(world, *args)


def spawn(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(world, *args)`` on 2 gloo ranks; an exception in a rank fails the test."""
    mp.spawn(_rank_main, args=(free_port(), fn, args), nprocs=WORLD)


def gather(t: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(parts, t.contiguous())
    return parts


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def fp32_spec() -> RunSpec:
    """small_cnn on 200 digits, batch 25: 8 steps an epoch, shards of 13 and 12 images."""
    return RunSpec("digits", "small_cnn", lp.recipes.get("fp32"), epochs=1, batch_size=25)


# -- (1) fp32: DDP equals one process with the same global batch ------------------------------


def _train_fp32(world: World, out: Path) -> None:
    train_run(fp32_spec(), out, tiny_digits(200), quiet=True)


def test_ddp_matches_single_process_training(tmp_path: Path) -> None:
    data = tiny_digits(200)
    single = train_run(fp32_spec(), tmp_path / "single", data, quiet=True)
    spawn(_train_fp32, tmp_path / "ddp")
    folder = tmp_path / "ddp" / single.folder.name
    assert json.loads((folder / CONFIG).read_text())["world_size"] == WORLD
    a, b = final_state(single.folder), final_state(folder)
    diff = max(float((a["params"][k] - b["params"][k]).abs().max()) for k in a["params"])
    # not bit-identical: each rank sums its shard's per-image gradients and the all-reduce adds
    # the two partial sums (and divides by 2 first), another float32 summation order than one
    # process's; measured 1.5e-8 after 8 steps (weights up to 0.34), losses agree to 3e-8
    assert diff < 1e-6
    [m1], [m2] = comparable(a["metrics"]), comparable(b["metrics"])
    assert m1["train_acc"] == m2["train_acc"] and m1["test_acc"] == m2["test_acc"]
    for key in ("loss", "test_loss"):
        assert m1[key] == pytest.approx(m2[key], rel=1e-5)
    with pytest.raises(RunError, match="differs in: world_size"):  # results depend on it
        train_run(fp32_spec(), tmp_path / "ddp", data, quiet=True)


# -- (2) stochastic rounding: weights in lockstep, activation streams per rank ---------------


def _lockstep(world: World) -> None:
    model = lp.prepare(small_cnn(), SR_COMM, seed=3, rank=world.rank)
    net = world.wrap(model, SR_COMM.grad_comm, seed=3)
    opt = lp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    comm = SR_COMM.grad_comm.format
    for step, (x, y) in enumerate(batches(4, size=16)):  # the same global batches on each rank
        opt.zero_grad()
        F.cross_entropy(net(world.shard(x)), world.shard(y)).backward()
        assert all(representable(p.grad, comm) for p in model.parameters())
        opt.step()
        mine, other = gather(flat_params(model))
        assert torch.equal(mine, other), f"ranks' weights differ after step {step + 1}"
    state = training.rounding_state(model)["generator"]
    assert torch.equal(*gather(state))  # one draw sequence: one saved state serves every rank
    x = batches(1, size=8)[0][0]  # the same input on both ranks
    out = model.eval()(x)
    act = [t.detach() for t in gather(model.conv1(x))]
    assert not torch.equal(*act)  # activations: a stream per rank
    assert representable(act[0], lp.formats.get("fp12"))
    assert not torch.equal(*gather(out.detach()))


def test_stochastic_ranks_keep_identical_weights_and_own_activation_streams() -> None:
    spawn(_lockstep)


# -- (3) the communication hook: rounded operands, fp32 sum, rounded mean ---------------------


def _hook_semantics(world: World) -> None:
    fmt = lp.formats.get("fp8_e5m2")
    model = lp.prepare(small_cnn(), "fp32", rank=world.rank)
    net = world.wrap(model, lp.QuantSpec(fmt), seed=0)
    local = small_cnn()  # the same weights, no hook: this rank's own gradient g_r
    x, y = batches(1, size=16)[0]
    x, y = world.shard(x), world.shard(y)
    F.cross_entropy(net(x), y).backward()
    F.cross_entropy(local(x), y).backward()
    for p, q in zip(model.parameters(), local.parameters(), strict=True):
        g0, g1 = (lp.quantize(g, fmt) for g in gather(q.grad))
        assert torch.equal(p.grad, lp.quantize((g0 + g1) / WORLD, fmt))
        assert representable(p.grad, fmt) and not representable(q.grad, fmt)
    # wrapping is no outside edit of prepared weights: fp32 masters stay the initial ones
    mixed = lp.prepare(small_cnn(), "bf16_mixed", rank=world.rank)
    world.wrap(mixed, None, seed=0)
    mixed.eval()(x)
    for a, b in zip(mixed.state_dict().values(), small_cnn().state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_comm_hook_rounds_each_rank_then_the_mean() -> None:
    spawn(_hook_semantics)


# -- (4) torchrun end to end: one run folder, resume equals an uninterrupted run -------------


def torchrun(*args: Any) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "lowprec",
           "train", "--ddp", "--dataset", "digits", "--model", "small_cnn", "--quiet",
           *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_train_writes_one_folder_and_resumes(tmp_path: Path) -> None:
    recipe = tmp_path / "fp12_sr_comm.toml"
    SR_COMM.to_file(recipe)
    args = ["--recipe-file", recipe, "--epochs", "2", "--batch-size", "64"]
    done = torchrun(*args, "--out", tmp_path / "whole")
    assert done.stdout.count(": done, test accuracy") == 1  # rank 0 alone prints
    [folder] = (tmp_path / "whole").iterdir()
    assert json.loads((folder / STATUS).read_text())["status"] == "done"
    assert json.loads((folder / CONFIG).read_text())["recipe"]["grad_comm"]["format"] == "fp8_e5m2"

    torchrun(*args, "--out", tmp_path / "cut", "--max-epochs-this-call", "1")
    cut = tmp_path / "cut" / folder.name
    assert not (cut / STATUS).exists() and final_state(cut)["epoch"] == 1
    torchrun(*args, "--out", tmp_path / "cut")  # resumes; DDP regroups its buckets afresh,
    a, b = final_state(folder), final_state(cut)  # which the hook's stream keys must not see
    assert comparable(a["metrics"]) == comparable(b["metrics"])
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])


def test_ddp_without_torchrun_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    code = cli.main(["train", "--ddp", "--recipe", "fp32", "--dataset", "digits"])
    assert code == 2 and "--ddp needs the environment torchrun sets" in capsys.readouterr().err

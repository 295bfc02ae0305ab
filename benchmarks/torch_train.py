"""The PyTorch yardstick: a rawflow run trained again with torch autograd and ``torch.optim.Adam``.

Same architecture, same initial parameters, same data stream:

* the model is the run's rawflow flow evaluated with torch ops (:mod:`benchmarks.torch_flows`, which
  confirms it is the same function, loss and every gradient, to round-off in float64);
* the initial parameters are the run's (:func:`rawflow.app.runs.init_state`: the same generator, the
  same data-dependent ActNorm init), copied into torch leaves;
* the batches are the run's: a copy of the run's generator in the state ``init_state`` left it, the
  same :class:`~rawflow.training.loop.EpochLoader` and the run's own dequantisation ``batch_fn``, so
  batch ``t`` holds the same rows and the same noise, bit for bit;
* the optimiser is ``torch.optim.Adam`` with rawflow's hyper-parameters (betas 0.9, 0.999, eps 1e-8)
  and the run's learning-rate schedule written into its parameter group before every step;
* validation every ``eval_every`` steps, the best-validation parameters kept, early stopping after
  ``patience`` evaluations without improvement, the test split scored with the best parameters:
  what :func:`rawflow.app.runs.run_training` does.

:func:`trajectories` runs rawflow's training loop and the torch loop side by side for a few steps and
returns every loss of both and the worst parameter difference (float64: the hand-written loop
trains what autograd would train). :func:`train_torch` is the full run, for the quality suite.
torch is imported inside the functions.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np

from . import torch_flows

ADAM = {"betas": (0.9, 0.999), "eps": 1e-8}  # rawflow.training.optim.Adam's defaults


def _torch():
    import torch

    return torch


def setup(cfg: dict):
    """``(model, data, state, batch_fn, train_x, lr)``: the run's pieces, as ``run_training`` builds them."""
    from rawflow.app import runs

    if cfg["optimizer"] != "adam" or cfg["device"] != "cpu":
        raise ValueError("the torch yardstick mirrors Adam on the CPU")
    model = runs.build_model(cfg)
    data = runs.load_data(cfg)
    state = runs.init_state(cfg, model, data)
    train_x, batch_fn = runs._host_batches(cfg, data, np)
    return model, data, state, batch_fn, train_x, runs.make_optimizer(cfg).lr


class TorchRun:
    """The torch side of a run: parameters (flow only: rawflow's priors here have none), Adam, batches."""

    def __init__(self, cfg: dict, model, state, batch_fn, train_x):
        torch = _torch()
        from rawflow.training.loop import EpochLoader

        if state.params["prior"]:
            raise ValueError("the torch yardstick covers standard priors (no learned prior parameters)")
        self.cfg, self.model, self.batch_fn, self.train_x = cfg, model, batch_fn, train_x
        self.params = torch_flows.to_torch(state.params["flow"], requires_grad=True)
        self.leaves = [t for _, t in torch_flows.leaves(self.params)]
        self.opt = torch.optim.Adam(self.leaves, lr=float(cfg["lr"]), **ADAM)
        self.rng = copy.deepcopy(state.rng)  # the run's generator, as init_state left it
        self.loader = EpochLoader(len(train_x), cfg["batch_size"])
        from rawflow.app.runs import make_optimizer

        self.lr = make_optimizer(cfg).lr
        self.step = 0

    def batch(self):
        torch = _torch()
        rows = self.train_x[self.loader.next(self.rng)]
        x = rows if self.batch_fn is None else self.batch_fn(rows, self.rng)
        return torch.from_numpy(np.ascontiguousarray(x))

    def train_step(self) -> float:
        """One Adam step on the next batch; returns the batch loss before the update."""
        torch = _torch()
        self.step += 1
        lr = self.lr(self.step) if callable(self.lr) else float(self.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss = torch_flows.nll(self.model.bijector, self.params, self.batch())
        loss.backward()
        clip = self.cfg["clip"]
        if clip is not None:  # rawflow's rule: scale by clip/‖g‖ when ‖g‖ > clip (no epsilon)
            norm = math.sqrt(sum(float((t.grad * t.grad).sum()) for t in self.leaves if t.grad is not None))
            if norm > clip:
                for t in self.leaves:
                    if t.grad is not None:
                        t.grad.mul_(clip / norm)
        self.opt.step()
        return float(loss.detach())

    def mean_nll(self, x: np.ndarray, params=None, batch_size: int = 1024) -> float:
        torch = _torch()
        params = self.params if params is None else params
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size]))
                total += float(torch_flows.nll(self.model.bijector, params, xb)) * len(xb)
        return total / len(x)

    def numpy_params(self, params=None) -> dict:
        params = self.params if params is None else params
        return _tree_map(lambda t: t.detach().numpy().copy(), params)


def _tree_map(fn, tree):
    return {k: _tree_map(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def trajectories(cfg: dict, steps: int = 50) -> dict:
    """rawflow's loop and the torch loop, ``steps`` steps each from the same start on the same batches.

    Returns ``{"loss_rawflow", "loss_torch"}`` (per step, before each update), ``loss_rel`` (per step
    ``|Δ|/|loss|``), ``param_rel`` (worst leaf's ``max|Δθ|/max|θ|`` after the last step) and its leaf,
    and each side's seconds.
    """
    from rawflow.app import runs
    from rawflow.training.loop import EpochLoader, train

    model, data, state, batch_fn, train_x, _ = setup(cfg)
    torch_run = TorchRun(cfg, model, state, batch_fn, train_x)
    t0 = time.perf_counter()
    params, _, losses = train(model, state.params, train_x, runs.make_optimizer(cfg), steps, cfg["batch_size"],
                              state.rng, loader=EpochLoader(len(train_x), cfg["batch_size"]), batch_fn=batch_fn,
                              max_grad_norm=cfg["clip"])
    t1 = time.perf_counter()
    torch_losses = np.array([torch_run.train_step() for _ in range(steps)])
    t2 = time.perf_counter()
    loss_rel = np.abs(torch_losses - losses) / np.abs(losses)
    theirs = dict(torch_flows.leaves(torch_run.numpy_params()))
    worst, where = 0.0, None
    for path, ours in torch_flows.leaves(params["flow"]):
        ours = np.asarray(ours)
        scale = float(np.max(np.abs(ours))) if ours.size else 0.0
        diff = float(np.max(np.abs(theirs[path] - ours))) if ours.size else 0.0
        rel = diff / scale if scale > 0 else diff
        if rel > worst or where is None:
            worst, where = rel, "/".join(path)
    return {"loss_rawflow": losses, "loss_torch": torch_losses, "loss_rel": loss_rel, "param_rel": worst,
            "param_leaf": where, "seconds_rawflow": t1 - t0, "seconds_torch": t2 - t1, "steps": steps,
            "dtype": cfg["dtype"]}


def train_torch(cfg: dict) -> dict:
    """The whole run in torch, as :func:`rawflow.app.runs.run_training` runs it (validation, best
    parameters, early stopping); returns the metrics the quality suite compares."""
    from rawflow.app import runs
    from rawflow.data.images import bits_per_dim

    model, data, state, batch_fn, train_x, _ = setup(cfg)
    tr = TorchRun(cfg, model, state, batch_fn, train_x)
    val_x = runs.eval_inputs(cfg, data, "val") if len(data.val) else None
    best, best_val, best_step, bad, stopped = None, None, 0, 0, None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    every = cfg["eval_every"]
    while tr.step < cfg["steps"] and stopped is None:
        loss = tr.train_step()
        if not math.isfinite(loss):
            raise FloatingPointError(f"torch run: non-finite loss at step {tr.step}")
        if val_x is not None and (tr.step % every == 0 or tr.step == cfg["steps"]):
            nll = tr.mean_nll(val_x)
            if math.isfinite(nll) and (best_val is None or nll < best_val):
                best, best_val, best_step, bad = _tree_map(lambda t: t.detach().clone(), tr.params), nll, tr.step, 0
            else:
                bad += 1
            if cfg["patience"] is not None and bad >= cfg["patience"] and tr.step < cfg["steps"]:
                stopped = tr.step
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    final = best if best is not None else tr.params
    test_nll = tr.mean_nll(runs.eval_inputs(cfg, data, "test"), final)
    out = {"test_nll": test_nll, "steps": tr.step, "best_step": best_step if best is not None else tr.step,
           "stopped_at": stopped, "train_time_s": wall, "cpu_time_s": cpu}
    if data.kind == "image":
        out["test_bits_per_dim"] = bits_per_dim(test_nll, data.dims, data.n_bins)
    return out

"""The training loop: one jit-compiled, sharded step per task, orbax checkpoints with exact
resume (params, optimizer state, step, PRNG key, grain iterator state), and logging to stdout,
JSONL and TensorBoard event files.

Sharding: a `jax.make_mesh` mesh with axes ("data", "fsdp"); the batch is split over both axes,
params and optimizer state are replicated over "data" and split over "fsdp" on their largest
divisible dimension, subject to config.mesh's size threshold and regex rules (train/sharding.py;
optimizer-state leaves follow the rules of the param they mirror). The global batch is assembled
from each process's grain shard with `jax.make_array_from_process_local_data`, so single- and
multi-host runs share one code path.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Dict

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tensorboardX import SummaryWriter

from sam2pp_jax.checkpoint import load_model, save_model
from sam2pp_jax.io.atomic import atomic_write_text
from sam2pp_jax.model.sam2pp import build_model, init_params
from sam2pp_jax.progress import Progress
from sam2pp_jax.train import data as train_data
from sam2pp_jax.train import forward, init_priors, losses, monitor, sharding
from sam2pp_jax.train.optimizer import make_optimizer
from sam2pp_jax.train.params import export_inference_params, init_train_params, params_for_task
from sam2pp_jax.train.peft import trainable_report


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any  # {"model": ..., ["lora": ...]}
  opt_state: Any
  rng: jax.Array  # uint32 key data of the run's base key


# ------------------------------------------------------------------------------ setup
def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when a multi-process launch is detected from the usual
  environment variables (explicit coordinator, SLURM with several tasks, multi-host TPU)."""
  env = os.environ
  multi = (
    "JAX_COORDINATOR_ADDRESS" in env
    or int(env.get("SLURM_NTASKS", "1")) > 1
    or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )
  if multi and not getattr(jax.distributed, "is_initialized", lambda: False)():
    jax.distributed.initialize()


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
  """("data", "fsdp") mesh over all devices; data = -1 takes what fsdp leaves."""
  n = jax.device_count()
  fsdp = int(mesh_cfg.fsdp)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} must divide the {n} devices")
  data = n // fsdp if int(mesh_cfg.data) == -1 else int(mesh_cfg.data)
  if data * fsdp != n:
    raise ValueError(f"config.mesh data={data} x fsdp={fsdp} != {n} devices")
  sharding.policy_from_config(mesh_cfg)  # bad rules fail here, before the model is built
  auto = jax.sharding.AxisType.Auto  # GSPMD propagation inside the model code
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(auto, auto))


def state_shardings(state, mesh, mesh_cfg):
  """NamedShardings of a TrainState (arrays or ShapeDtypeStructs) under the FSDP size threshold
  and regex rules of `mesh_cfg` (config.mesh; train/sharding.py)."""
  policy = sharding.policy_from_config(mesh_cfg, mesh.axis_names)
  params = state.params if isinstance(state, TrainState) else state
  specs = sharding.tree_specs(state, params, dict(mesh.shape), policy)
  return jax.tree.map(lambda _, s: NamedSharding(mesh, s), state, specs)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(("data", "fsdp")))


def run_optimizer_config(config):
  """config.optim with the lr schedule's length set to the run's total_steps: a schedule longer
  than the run never anneals (the old demo scheduled 3,000 steps and ran ~1,200)."""
  import ml_collections

  o = ml_collections.ConfigDict(config.optim.to_dict())
  o.total_steps = int(config.total_steps)
  return o


def build_train_model(config):
  """The model of a training config, computing in config.compute_dtype ("bfloat16": mixed
  precision with float32 params, optimizer state and losses; "float32": the inference path)."""
  return build_model(config.model, str(config.get("compute_dtype", "float32")))


def init_state(config, model, key) -> tuple:
  """(TrainState, optax tx, OptimizerInfo) from config.init_from or a fresh init."""
  k_init, k_lora = jax.random.split(key)
  if config.init_from:
    loaded_cfg, params = load_model(config.init_from)
    if loaded_cfg.preset != config.model.preset:
      raise ValueError(
        f"--config.init_from {config.init_from!r} holds preset "
        f"{loaded_cfg.preset!r} but config.model.preset is "
        f"{config.model.preset!r}"
      )
    params = jax.tree.map(jnp.asarray, params)
  else:
    params = init_params(model, k_init)
    amp = float(config.get("init_rope_prior", 0.0))
    if amp:  # from-scratch recipes only (train/init_priors.py)
      heads = int(config.model.memory_attention.num_heads)
      params = dict(params)
      for t in config.model.tasks:
        k = f"memory_attention_{t}"
        params[k] = init_priors.rope_locality_prior(params[k], heads, amp)
  train_params = init_train_params(params, k_lora, config.lora)
  tx, info = make_optimizer(run_optimizer_config(config), train_params)
  state = TrainState(
    step=jnp.int32(0),
    params=train_params,
    opt_state=tx.init(train_params),
    rng=jax.random.key_data(key),
  )
  return state, tx, info


# ------------------------------------------------------------------------------ the step
def make_loss_fn(model, config, task: str):
  """loss(train_params, batch, key) -> (core_loss, dict of loss terms)."""
  loss_cfg = dict(config.loss[task])

  def loss_fn(train_params, batch, key):
    params = params_for_task(train_params, task, config.lora)
    r = forward.clip_forward(model, params, batch, key, task=task, cfg=config.prompts)
    out = r["outputs"]
    terms = losses.multistep_loss(
      out,
      r["targets"],
      loss_cfg,
      task=task,
      valid=r["valid"],
      step_valid=out["step_valid"],
      candidate_valid=out["candidate_valid"],
    )
    terms = dict(terms)
    terms.update(
      monitor.tracking_quality(
        out,
        r["targets"],
        r["plan"]["branch"],
        r["valid"],
        task,
        objects_per_clip=int(batch["masks"].shape[2]),
      )
    )
    return terms[losses.CORE_LOSS_KEY], terms

  return loss_fn


def make_train_step(model, tx, config, task: str, mesh, state_sh) -> Callable:
  """One jitted step (state, batch) -> (state, metrics) for `task`, sharded and donating the
  state. The step's key is fold_in(run key, step): a resumed run draws the same prompts."""
  loss_fn = make_loss_fn(model, config, task)

  def step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(terms)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  repl = NamedSharding(mesh, P())
  return jax.jit(
    step,
    in_shardings=(state_sh, batch_sharding(mesh)),
    out_shardings=(state_sh, repl),
    donate_argnums=(0,),
  )


def global_batch(local: Dict[str, np.ndarray], mesh) -> Dict[str, jax.Array]:
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local.items()}


# ------------------------------------------------------------------------------ logging
class Logger:
  """stdout lines, metrics.jsonl (truncated to the resumed step on restart) and TensorBoard
  event files under workdir/tb (tensorboardX). Only the writer process (process 0 of a
  multi-host run) touches the files: hosts share the workdir."""

  def __init__(self, workdir: str, resume_step: int, quiet: bool = False, writer: bool = True):
    self.quiet, self.writer = quiet, writer
    if not writer:
      return
    self.jsonl = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.jsonl):  # drop lines a killed run wrote after its checkpoint
      with open(self.jsonl) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= resume_step]
      atomic_write_text(self.jsonl, "".join(keep))
    self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def log(self, step: int, task: str, metrics: Dict[str, float], extra: Dict[str, float]):
    if not self.writer:
      return
    rec = {"step": step, "task": task}
    rec.update({k: float(v) for k, v in metrics.items()})
    rec.update(extra)
    with open(self.jsonl, "a") as f:
      f.write(json.dumps(rec) + "\n")
    for k, v in metrics.items():
      self.tb.add_scalar(f"{task}/{k}", float(v), step)
    self.tb.flush()
    if not self.quiet:
      terms = " ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()))
      print(f"step {step} [{task}] {terms}", flush=True)

  def close(self):
    if self.writer:
      self.tb.close()


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_manager(workdir: str, keep: int):
  import orbax.checkpoint as ocp

  opts = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True)
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), "checkpoints"),
    options=opts,
    item_names=("state", "data"),
  )


def save_checkpoint(mngr, state: TrainState, data_state: dict) -> None:
  import orbax.checkpoint as ocp

  mngr.save(
    int(state.step),
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
  )
  mngr.wait_until_finished()


def restore_checkpoint(mngr, abstract_state):
  import orbax.checkpoint as ocp

  step = mngr.latest_step()
  if step is None:
    return None, None
  r = mngr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
    ),
  )
  return r["state"], r["data"]


# ------------------------------------------------------------------------------ loop
def train(config, workdir: str, *, quiet: bool = False, on_step=None) -> dict:
  """Train until config.total_steps or config.max_train_minutes; returns a summary dict.

  Resumes from the latest checkpoint in workdir (state and data iterator), saves every
  config.ckpt_every steps and at the end, and writes the inference checkpoint (merged per-task
  memory attention) to workdir/model.
  """
  maybe_initialize_distributed()
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh(config.mesh)
  pc, pi = jax.process_count(), jax.process_index()
  if int(config.data.global_batch) % (mesh.size if pc == 1 else pc):
    raise ValueError(
      f"config.data.global_batch={config.data.global_batch} must be divisible by "
      f"the {mesh.size} devices"
    )
  model = build_train_model(config)
  key = jax.random.key(int(config.seed))
  state, tx, info = init_state(config, model, key)
  if pi == 0 and not quiet:  # what trains, beside the reference's peft rules on this model
    print(trainable_report(config, state.params, info), flush=True)
  state_sh = state_shardings(state, mesh, config.mesh)
  state = jax.device_put(state, state_sh)
  mngr = checkpoint_manager(workdir, config.keep_checkpoints)
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh
  )
  restored, data_state = restore_checkpoint(mngr, abstract)
  if restored is not None:
    state = restored
  start = int(state.step)
  it = train_data.make_train_iterator(
    config.data, int(config.seed), process_index=pi, process_count=pc, start_step=0
  )
  if data_state is not None:
    it.set_state(data_state)
  elif start:
    raise RuntimeError(f"checkpoint at step {start} in {workdir} lacks its data state")
  if it.get_state()["next_step"] != start:
    raise RuntimeError(
      f"checkpoint at step {start} in {workdir} holds the data state of another step: "
      f"{data_state!r}"
    )
  log = Logger(workdir, start, quiet=quiet or pi != 0, writer=pi == 0)
  steps: Dict[str, Callable] = {}
  total = int(config.total_steps)
  budget = float(config.max_train_minutes) * 60.0
  train_seconds, compile_seconds, data_wait_seconds = 0.0, 0.0, 0.0
  bar = None if (quiet or pi != 0) else Progress(total, "train", unit="steps", initial=start)
  postfix = ""  # the bar shows the last logged loss: other steps' metrics stay on the device
  metrics, previous = None, None
  step = start
  try:
    while step < total and (budget <= 0 or train_seconds < budget):
      # wall time of the whole iteration (data, step, logging, checkpoints); an iteration that
      # compiles a task's step counts as compilation instead
      t0 = time.time()
      task, local = next(it)
      waited = time.time() - t0
      first = task not in steps
      if first:
        steps[task] = make_train_step(model, tx, config, task, mesh, state_sh)
      state, metrics = steps[task](state, global_batch(local, mesh))
      # the host runs at most one step ahead of the device: the next batch is fetched and
      # transferred while this step runs, and the timings stay within a step of the truth
      jax.block_until_ready(metrics if first else previous)
      previous = metrics
      step += 1
      if step % int(config.log_every) == 0 or step == total:
        fetched = jax.device_get(metrics)
        log.log(step, task, fetched, {"train_seconds": round(train_seconds + time.time() - t0, 3)})
        postfix = f"{task} loss {float(fetched.get('core_loss', math.nan)):.3f}"
      if step % int(config.ckpt_every) == 0:
        save_checkpoint(mngr, state, it.get_state())
      if bar is not None:
        bar.update(step, postfix)
      if on_step is not None:
        on_step(step)
      dt = time.time() - t0
      if first:
        compile_seconds += dt
      else:
        train_seconds += dt
        data_wait_seconds += waited
  finally:
    it.close()  # grain's threads / worker processes
  last = {} if metrics is None else {k: float(v) for k, v in jax.device_get(metrics).items()}
  if step < total and pi == 0:
    factor = float(info.schedule(step))
    print(
      f"train: stopped by max_train_minutes={config.max_train_minutes:g} at step {step} of "
      f"{total}; the lr schedule was at {factor:.3f} of its peak (set total_steps to what "
      "fits the budget for a schedule that anneals)",
      flush=True,
    )
  if mngr.latest_step() != step:
    save_checkpoint(mngr, state, it.get_state())
  log.close()
  model_dir = os.path.join(workdir, "model")
  if pi == 0:
    params = jax.device_get(export_inference_params(state.params, config.lora))
    save_model(model_dir, params, config.model, overwrite=True)
  summary = {
    "step": step,
    "train_seconds": train_seconds,
    "compile_seconds": compile_seconds,
    "data_wait_seconds": data_wait_seconds,  # of train_seconds: blocked in next(iterator)
    "model_dir": model_dir,
    "last_metrics": last,
  }
  if pi == 0:
    atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=1) + "\n")
  return summary

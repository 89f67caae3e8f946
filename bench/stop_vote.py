"""What the ranks' stop vote costs (train/distributed.py StopVote, used by train/callbacks.py Preemption), one run.

Two real Horovod ranks over Open MPI on CPU train the same compiled model on synthetic images in alternating rounds:
without the stop callback, with the callback voting after every step (its worst case), and with the callback as the
trainer uses it (a vote about every STOP_VOTE_SECONDS of training). Each round is its own fit() of --steps steps; the
first round of each mode is warm-up (tracing) and is left out. Run by hand:

    .venv/bin/python bench/stop_vote.py [--arch resnet --layers 10 --size 16 --batch 8] [--rounds 4 --steps 60]

It starts mpirun itself (-np 2) and prints, from rank 0, the median seconds per step of each mode, the ratios to no
vote, the votes each mode made, the cost of one vote (every-step minus none, per step) and the median time of one
vote on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("none", "every step", "about 1 s")


def _launch(argv: list[str]) -> int:
    cmd = ["mpirun", "-np", "2", "--bind-to", "none", "-x", "PATH", "-x", "PYTHONPATH", "-x", "KESTREL_BENCH_RANK=1"]
    if os.getuid() == 0:
        cmd.append("--allow-run-as-root")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), KESTREL_BENCH_RANK="1")
    return subprocess.run([*cmd, sys.executable, os.path.abspath(__file__), *argv], env=env).returncode


def _rank_main(args: argparse.Namespace) -> None:
    import numpy as np
    import tensorflow as tf

    from kestrel_trainer.models.registry import create_model
    from kestrel_trainer.spec import parse_spec_text
    from kestrel_trainer.train import distributed as dist
    from kestrel_trainer.train.callbacks import Preemption
    from kestrel_trainer.train.task import compile_model, make_optimizer

    ranks = dist.init_ranks()
    spec = parse_spec_text(f"""
model_config {{ arch: "{args.arch}" n_layers: {args.layers} input_image_size: "1,{args.size},{args.size}"
               use_batch_norm: true }}
train_config {{ train_dataset_path: "/unused" val_dataset_path: "/unused" optimizer {{ sgd {{ momentum: 0.9 }} }}
  lr_config {{ cosine {{ learning_rate: 0.01 soft_start: 0.1 }} }} reg_config {{ type: "None" }}
  batch_size_per_gpu: {args.batch} n_epochs: 1 n_workers: 1 preprocess_mode: "torch" }}
""", task="train")
    tf.keras.utils.set_random_seed(1)
    model = create_model(spec.model, 10)
    total = args.steps * args.rounds * len(MODES)
    compile_model(model, spec, make_optimizer(spec, total, ranks.size), dist.optimizer_wrapper(ranks, False))
    dist.broadcast_state(ranks, model)
    rng = np.random.default_rng(ranks.rank)
    x = rng.normal(size=(args.batch * 16, args.size, args.size, 1)).astype("float32")
    y = tf.keras.utils.to_categorical(rng.integers(0, 10, len(x)), 10)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).repeat().prefetch(2)

    class StepTimer(tf.keras.callbacks.Callback):
        """Wall seconds of one fit()'s steps: from the first batch's start to the end of training."""

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    votes: dict[str, int] = {m: 0 for m in MODES}
    for round_ in range(args.rounds + 1):  # round 0: warm-up of every mode
        for mode in MODES:
            timer = StepTimer()
            callbacks = [timer]
            stop = None
            if mode != "none":
                vote = dist.StopVote(ranks, every_seconds=0.0 if mode == "every step" else dist.STOP_VOTE_SECONDS)
                stop = Preemption(None, ranks=ranks, vote=vote)
                callbacks.insert(0, stop)
            model.fit(data, epochs=1, steps_per_epoch=args.steps, callbacks=callbacks, verbose=0)
            if round_:
                seconds[mode].append(timer.seconds / args.steps)
                votes[mode] += stop.vote.votes if stop else 0
    # One vote on its own, back to back (what a vote adds to the step it ends): robust on a loaded machine, where the
    # rounds' step times vary more than the vote costs.
    bare = dist.StopVote(ranks)
    vote_seconds = []
    for _ in range(args.bare_votes):
        t = time.perf_counter()
        bare.vote(0)
        vote_seconds.append(time.perf_counter() - t)
    if ranks.is_chief:
        one_vote = statistics.median(vote_seconds)
        print(f"one vote alone: median {one_vote * 1000:.2f} ms over {args.bare_votes} (p90 "
              f"{sorted(vote_seconds)[int(0.9 * len(vote_seconds))] * 1000:.2f} ms): about "
              f"{one_vote / (dist.STOP_VOTE_SECONDS + one_vote) * 100:.2f} % of training time at one vote per "
              f"{dist.STOP_VOTE_SECONDS:.0f} s")
        med = {m: statistics.median(s) for m, s in seconds.items()}
        print(json.dumps({"rounds": args.rounds, "steps": args.steps, "model": spec.model.name,
                          "input": f"{args.size}x{args.size}", "batch_per_rank": args.batch,
                          "seconds_per_step": {m: [round(v, 5) for v in s] for m, s in seconds.items()}}))
        print(f"{spec.model.name} {args.size}x{args.size}, batch {args.batch} per rank, 2 ranks (Open MPI, CPU); "
              f"{args.rounds} rounds x {args.steps} steps per mode, alternating; median seconds per step:")
        for m in MODES:
            print(f"  {m:<11} {med[m] * 1000:8.2f} ms/step  ratio to none {med[m] / med['none']:.3f}  "
                  f"votes {votes[m]}")
        print(f"one vote costs about {(med['every step'] - med['none']) * 1000:.2f} ms "
              f"(every step minus none); as the trainer votes: ratio {med['about 1 s'] / med['none']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--bare-votes", type=int, default=200)
    args = ap.parse_args()
    if os.environ.get("KESTREL_BENCH_RANK") != "1":
        sys.exit(_launch(sys.argv[1:]))
    _rank_main(args)


if __name__ == "__main__":
    main()

# Watch where Mid-Block LoRA changes the model while TRL's SFTTrainer trains it: per-block scalars in TensorBoard
# (pip install 'midblock[tensorboard]'), then `midblock monitor runs/monitor-example` draws the heatmaps.
# Runs on a CPU as written (README.md includes this file verbatim; tests/tuning/test_monitor.py runs it).
import os

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from midblock import MidBlockCallback, MidBlockMonitor, band_lora_config, load_model
from midblock.data import load_examples

spec = os.environ.get("MIDBLOCK_EXAMPLE_MODEL", "smollm2-135m")  # the test runs it on random:llama-tiny
steps = int(os.environ.get("MIDBLOCK_EXAMPLE_STEPS", "20"))
model, tok = load_model(spec)


def rows(split, n):
    return Dataset.from_list(
        [{"prompt": e.prompt, "completion": e.completion} for e in load_examples("arith", split, limit=n)]
    )


args = SFTConfig(
    "runs/monitor-example",
    per_device_train_batch_size=8,
    learning_rate=1e-3,
    max_steps=steps,
    max_length=256,
    bf16=torch.cuda.is_available(),
    logging_steps=5,
    save_strategy="no",
    report_to="tensorboard",  # or wandb, trackio, ...: every report_to backend gets the monitor's scalars
)
trainer = SFTTrainer(
    model=model,
    args=args,
    train_dataset=rows("train", 64),
    eval_dataset=rows("test", 32),  # the monitor's probe rows: held out, never trained on
    processing_class=tok,
    peft_config=band_lora_config(model, band="seg2-4/5", budget_baseline_rank=8),
    callbacks=[MidBlockCallback()],
)
# every 5 steps: 1 - CKA(base, now), ||W - W0|| / ||W0|| and the gradient share of each block, logged as
# midblock/cka_change/block_07 ... through trainer.log and written to runs/monitor-example/monitor.jsonl
monitor = MidBlockMonitor(every=5).attach(trainer)
trainer.train()

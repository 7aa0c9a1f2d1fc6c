# Mid-Block LoRA inside TRL's SFTTrainer, with TRL's default gradient checkpointing on.
# Runs on a CPU as written (README.md includes this file verbatim; tests/tuning/test_trainers.py runs it).
import os

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from midblock import MidBlockCallback, band_lora_config, load_model
from midblock.data import load_examples

spec = os.environ.get("MIDBLOCK_EXAMPLE_MODEL", "smollm2-135m")  # the test runs it on random:llama-tiny
steps = int(os.environ.get("MIDBLOCK_EXAMPLE_STEPS", "20"))
model, tok = load_model(spec)

# prompt/completion rows: TRL masks the prompt (completion-only loss) and appends EOS
rows = load_examples("arith", "train", limit=64)
ds = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in rows])

args = SFTConfig(
    "runs/trl-example",
    per_device_train_batch_size=8,
    learning_rate=1e-3,
    max_steps=steps,
    max_length=256,
    gradient_checkpointing=True,  # TRL's default, kept to the band and the blocks above it
    bf16=torch.cuda.is_available(),  # SFTConfig defaults to bf16, which a CPU run refuses
    logging_steps=5,
    save_strategy="no",
    report_to="none",
)
trainer = SFTTrainer(
    model=model,
    args=args,
    train_dataset=ds,
    processing_class=tok,
    # LoRA on blocks 6-23 of 30 at the rank units of all-block r8 (r13), lora_alpha = 2r
    peft_config=band_lora_config(model, band="seg2-4/5", budget_baseline_rank=8),
    callbacks=[MidBlockCallback()],  # repairs what TRL switched on, logits only at labelled positions
)
trainer.train()
trainer.model.save_pretrained("runs/trl-example/adapter")

# Mid-Block LoRA inside transformers' Trainer, with the trainer's own gradient checkpointing on.
# Runs on a CPU as written (README.md includes this file verbatim; tests/tuning/test_trainers.py runs it).
import os

from transformers import Trainer, TrainingArguments

from midblock import MidBlockCallback, MidBlockConfig, load_model, prepare_model
from midblock.data import collate, load_examples, tokenize_sft

spec = os.environ.get("MIDBLOCK_EXAMPLE_MODEL", "smollm2-135m")  # the test runs it on random:llama-tiny
steps = int(os.environ.get("MIDBLOCK_EXAMPLE_STEPS", "20"))
model, tok = load_model(spec)
model = prepare_model(model, MidBlockConfig(method="midblock", band="seg2-4/5", budget_baseline_rank=8))

# completion-only examples (prompt tokens labelled -100, EOS appended); collate_fn pads a batch of them
ds = tokenize_sft(load_examples("arith", "train", limit=64), tok, 256).items


def collate_fn(batch):
    return collate(batch, tok.pad_token_id)


args = TrainingArguments(
    "runs/trainer-example",
    per_device_train_batch_size=8,
    learning_rate=1e-3,
    max_steps=steps,
    gradient_checkpointing=True,  # kept to the band and the blocks above it, non-reentrant
    remove_unused_columns=False,  # the collator needs input_ids and labels as they are
    logging_steps=5,
    save_strategy="no",
    report_to="none",
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=ds,
    data_collator=collate_fn,
    callbacks=[MidBlockCallback()],  # checks the truncated backward, logits only at labelled positions
)
trainer.train()
model.save_pretrained("runs/trainer-example/adapter")

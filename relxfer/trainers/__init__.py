"""Fine-tuning engines behind one protocol (`base.Trainer`); the training loop itself is
`relxfer.finetune`."""

"""Fine-tuning: SFT examples from verified letters, LoRA / QLoRA / full training on one or many ranks.

config.py   typed configs of the dataset and train stages
answer.py   the assistant turn: canonical compact JSON of a gold extraction, and its inverse
chat.py     chat messages of one example, tokenisation with the model's template, the label mask
collate.py  padded and packed batches (no attention across packed examples), useful-token counts
trainer.py  the HF Trainer path: peft LoRA/QLoRA, full, DeepSpeed ZeRO-2/3, stop -> checkpoint -> requeue
"""

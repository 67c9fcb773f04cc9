"""`python -m bcd.bench`: how fast training, the input pipeline and inference run, side by side in one process.

measure.py times and tracks memory; training.py compares a plain timm loop with the real bcd training step;
loading.py times decoding, augmentation and the loaders; inference.py times torch and ONNX Runtime;
machine.py describes the machine; report.py writes bench.md.
"""

"""From a trained model to per-image scores: TTA views, temperature, the energy OOD score, abstention, torch and ONNX runners, Grad-CAM and export."""

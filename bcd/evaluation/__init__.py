"""Numbers about models and data: bootstrap statistics, calibration fits, colour-shift robustness, cross-validation and the dataset audit."""

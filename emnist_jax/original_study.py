"""The numbers the original study reported (docs/original-study.md), for comparison tables.

These are the study's printed results on the real EMNIST ByClass file, never our own.
"""

MI_MAX = 0.357341539
MI_ARGMAX = 184                      # file (transposed) pixel order
MI_ZERO_PIXELS = 66
MI_TOP5 = (184, 185, 183, 186, 182)

# RandomForest accuracy vs top-k MI pixels, k = 2..64 (section 3.4), as correct / 15,000.
RF_CORRECT = (1986, 2035, 2233, 2400, 2715, 3035, 3177, 3366, 3464, 3495, 3850, 3946, 4047, 4140, 4218, 4214,
              4287, 4411, 5064, 5255, 5211, 5393, 5354, 5613, 5743, 5901, 5886, 6047, 6167, 6717, 6769, 6793,
              6856, 6922, 7003, 7019, 7644, 7630, 7753, 7833, 7780, 7860, 7847, 7756, 7845, 7867, 7911, 8090,
              8009, 7988, 8160, 8293, 8323, 8396, 8794, 8735, 8950, 8877, 8847, 8957, 8900, 9041, 8985)
RF_K = tuple(range(2, 65))
RF_ACCURACY = tuple(c / 15_000 for c in RF_CORRECT)

LBFGS_NOT_CONVERGED = (12, 16, 17, 20, 22, 28)   # of n_components 1..29

CNN_PARAMS = 362_942
CNN_TRAIN, CNN_HOLDOUT = 467_614, 230_318
CNN_EPOCH_LOSS = (0.6765, 0.3737, 0.3464, 0.3291, 0.3137, 0.3000, 0.2924, 0.2821, 0.2750, 0.2640)
CNN_EPOCH_ACCURACY = (0.7892, 0.8615, 0.8696, 0.8744, 0.8789, 0.8842, 0.8854, 0.8894, 0.8910, 0.8948)
CNN_EPOCH_SECONDS = (861, 842, 840, 2664, 1194, 850, 2797, 836, 847, 1920)
CNN_HOLDOUT_LOSS = 0.40515509247779846
CNN_HOLDOUT_ACCURACY = 0.8628331422805786
CNN_EVAL_SECONDS = 223

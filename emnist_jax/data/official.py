"""The official EMNIST release: addresses, checksums and counts, kept in this one place.

Source: ``shared/EMNIST_FILES.md`` (Cohen et al. 2017, arXiv:1702.05373). The NIST server only
offers the two whole archives; a split's files are extracted from them.
"""

BASE_URL = "https://biometrics.nist.gov/cs_links/EMNIST/"

#: archive format -> (file name, pooch-style known hash or None where none is published).
ARCHIVES = {
    "gzip": ("gzip.zip", "md5:58c8d27c78d21e728a6bc7b3cc06412e"),
    "matlab": ("matlab.zip", None),
}

#: split -> (number of classes, train count, test count)
SPLITS = {
    "byclass": (62, 697_932, 116_323),
    "bymerge": (47, 697_932, 116_323),
    "balanced": (47, 112_800, 18_800),
    "letters": (26, 124_800, 20_800),
    "digits": (10, 240_000, 40_000),
    "mnist": (10, 60_000, 10_000),
}

#: member file name -> (sha256 of the file as stored in the archive, size in bytes)
FILES = {
    "emnist-balanced-train-images-idx3-ubyte.gz": ("74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4", 28_207_740),
    "emnist-balanced-train-labels-idx1-ubyte.gz": ("b46d41e5156a0a8aaaa4d18979fdd1588850fa8571018acffd5d93b325a7d6ed", 80_618),
    "emnist-balanced-test-images-idx3-ubyte.gz": ("117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db", 4_714_707),
    "emnist-balanced-test-labels-idx1-ubyte.gz": ("a67cac948379b67270b9a4d0a01c8ec661598accf2f2b1964340b7c83cb175cd", 13_504),
    "emnist-byclass-train-images-idx3-ubyte.gz": ("9e21987f03a6eb8b870187e785883ddad96947299587908f1a7ec2ca0f4be5f0", 173_367_313),
    "emnist-byclass-train-labels-idx1-ubyte.gz": ("f7ef403d48dc18a89dae0d83d11ee69cecb6e1c12c3a961d03712e495c02a8fa", 491_603),
    "emnist-byclass-test-images-idx3-ubyte.gz": ("5ec835bd5d5b1a66378a132e727fef20fe994b3cc666899befcca5ac766f50cd", 28_908_322),
    "emnist-byclass-test-labels-idx1-ubyte.gz": ("501e305eeeacb093b162592d80e8a2632040872360fa6d85cfcb2200d91ca92a", 81_839),
    "emnist-bymerge-train-images-idx3-ubyte.gz": ("39bf8c68037dad40db35348895f7e4e056e8c0a005ab78869c9fbc2c96e947be", 173_375_281),
    "emnist-bymerge-train-labels-idx1-ubyte.gz": ("2c47293b9e62d6abf6ad05fbf67e40baa32adfd380b8d7b44dcc35534b64e1f1", 476_444),
    "emnist-bymerge-test-images-idx3-ubyte.gz": ("5e5815ec1b522089134435f7c55e75a00960b58414793593ffff23efc0821683", 28_905_295),
    "emnist-bymerge-test-labels-idx1-ubyte.gz": ("8bda1516255683ba9071e141947ca0c91a911176065cdd6259b0b4d8dc5b5f35", 79_351),
    "emnist-digits-train-images-idx3-ubyte.gz": ("f7c95004d14d81af89522e67d8f0c781dfb3bd544181c81bfe1eb6b41c35b726", 59_515_779),
    "emnist-digits-train-labels-idx1-ubyte.gz": ("6638a6ff5fe2eefd9cca2471995b46c82986b8e4b2a70d2f5ce8e05d7edb319e", 113_859),
    "emnist-digits-test-images-idx3-ubyte.gz": ("20ebe43509264f7639d37c835a3f0b009e90b29e00a099a03101abe1644a3f63", 9_908_519),
    "emnist-digits-test-labels-idx1-ubyte.gz": ("bad1834c45d5988e270b99d43b13edc3fd898f658ffbc2caf2846ef27f7b05b0", 19_960),
    "emnist-letters-train-images-idx3-ubyte.gz": ("6288f418a917e007bf5fddb823a2dc7a5c6a35031401b93292a539cb12bd881f", 30_804_864),
    "emnist-letters-train-labels-idx1-ubyte.gz": ("9759af91ea6bccdf07a6040fd085861f2ec88e37f7c3f5760f6feb57106fbe5c", 79_283),
    "emnist-letters-test-images-idx3-ubyte.gz": ("50f0e93d75b99b463e9760b8345866f22587fa2c2fba472730a5ba09c693412d", 5_039_157),
    "emnist-letters-test-labels-idx1-ubyte.gz": ("924955c31fe7fd809b7303b5c0141282955f4b8390c74cdfd5d80435e0f4b4cb", 144),
    "emnist-mnist-train-images-idx3-ubyte.gz": ("5f9942f441031c0f1f2e4d162059fd6e19ea808b34c328b6d16cab0ed24c78f2", 14_873_795),
    "emnist-mnist-train-labels-idx1-ubyte.gz": ("00c6d3c2342fdffb1711e0b5656cac4ce5862d2826399d383a9bac07d612e9f8", 29_480),
    "emnist-mnist-test-images-idx3-ubyte.gz": ("b25640fa9e356c618132f5df347c95ef5bae6d9c2596be1de40f7e0ae1c3eac6", 2_484_884),
    "emnist-mnist-test-labels-idx1-ubyte.gz": ("bcc5385d38f083dba046f5f756e99b32f5ea7fad122c6243c71c2239873065ca", 5_144),
    "emnist-balanced-mapping.txt": ("956dc507bf69e9f31f4e3e876d22ec66124aa229b5d0bd65ab8956a8044d3ede", 328),
    "emnist-byclass-mapping.txt": ("68fa9091ed325830418b5a8d732f32316e54a480b9f8994a161abb4eddd0d078", 447),
    "emnist-bymerge-mapping.txt": ("956dc507bf69e9f31f4e3e876d22ec66124aa229b5d0bd65ab8956a8044d3ede", 328),
    "emnist-digits-mapping.txt": ("6d157dc46a7b1c80d630f4fed571d9964db37ee1669cac403b6db2c8bb109d94", 60),
    "emnist-letters-mapping.txt": ("a56cb9a31c08e3251a61ea7b1ec8bc4f4cabdc1edf3128508d3a485ad53fa456", 274),
    "emnist-mnist-mapping.txt": ("6d157dc46a7b1c80d630f4fed571d9964db37ee1669cac403b6db2c8bb109d94", 60),
    "emnist-balanced.mat": ("ce27083f60e3d236e876043dcb1f31f03a45747a80488d6b0add9ab6677c87e2", 44_066_000),
    "emnist-byclass.mat": ("f490833cd08532c3b128f90c9be0c7aaba4db114e56bef4a201adf601f814638", 269_453_200),
    "emnist-bymerge.mat": ("ef2a779f2372efa102e19ad1639f3394b5e50a6f0d3d939613f401e9223b02dc", 269_436_800),
    "emnist-digits.mat": ("b35de2e79e2f4c0061730158d8e9af182c5cb587e92524f5a47627be87e3c59b", 90_740_164),
    "emnist-letters.mat": ("349703f166c41866193f49827a7fcca63c2b763498ee4e66d0683a83e57852d9", 48_221_708),
    "emnist-mnist.mat": ("96a8092fa7a1a5454d6628a4287ebdcb155cfbd9220851a9f4dee49e3476eec0", 22_710_042),
}


def split_files(split: str, archive_format: str) -> list[str]:
    """The member names of ``split`` inside the archive of ``archive_format``."""
    if archive_format == "matlab":
        return [f"emnist-{split}.mat"]
    parts = [f"emnist-{split}-{part}-{kind}-ubyte.gz"
             for part in ("train", "test") for kind in ("images-idx3", "labels-idx1")]
    return parts + [f"emnist-{split}-mapping.txt"]

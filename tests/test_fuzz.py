"""Fuzzing the readers: mutated valid files give a Model or an InputError, nothing else.

Each case takes a small valid file of one format (``_fuzz_seeds.seeds``), damages it once or
twice (``_fuzzing.mutate``: byte edits, or structure-aware edits of the zip members, pickle,
JSON header, protobuf fields or HDF5 objects), writes it beside the seed's side files and reads
it with :func:`rnnshrink.read`. CI runs a bounded, reproducible number of cases per reader;
``RNNSHRINK_FUZZ_EXAMPLES=10000`` runs that many, freshly randomised, by hand. The atheris
harness in ``tests/fuzz/`` drives the same seeds and mutators with coverage feedback.
"""

import faulthandler
import hashlib
import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fuzz_seeds import seeds
from _fuzzing import READERS, case, check_read

BY_HAND = os.environ.get("RNNSHRINK_FUZZ_EXAMPLES")
CASE_SECONDS = 60  # a case running longer than this is a hang: the run stops


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    return folder, {fmt: seeds(fmt, folder) for fmt in READERS}


@pytest.mark.parametrize("fmt", READERS)
def test_mutated_files_read_or_raise_input_error(seed_files, fmt):
    folder, found = seed_files

    @settings(max_examples=int(BY_HAND or 60), derandomize=not BY_HAND, database=None,
              deadline=timedelta(seconds=CASE_SECONDS), print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case_seed=st.integers(0, 2**64 - 1))
    def run(case_seed):
        name, data = case(fmt, found[fmt], case_seed)
        path = folder / f"case{os.path.splitext(name)[1]}"
        path.write_bytes(data)
        # a hang inside C code (libhdf5) cannot be interrupted: dump the stacks and exit
        faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
        try:
            check_read(path)
        finally:
            faulthandler.cancel_dump_traceback_later()

    run()


# Cases the by-hand runs found (reader, case number, SHA-256 of the case's bytes), each fixed;
# the hash tells whether the mutators still make the same file here. Findings that could be
# built by hand are in the hostile corpus instead.
FINDINGS = [
    ("keras-h5", 1826695561513825908,  # a visit callback's error became SystemError
     "c7a583aab030db47c41df86936709983f9d1beb9775484a2114598ff8c76bde4"),
    ("keras-h5", 12989517188679636349,  # KeyError from h5py while sniffing
     "45255f8bcfd8f5fe35e69c5a9cfa8d93861c326881d11e2c7ffa168cccce331c"),
    ("keras-h5", 14119031716554708373,  # libhdf5 crashed on a damaged string type
     "1132a095e514f6321f2b1479331d5bbef4483d8d51440c338aa599970ea240eb"),
    ("onnx", 7266922204319635221,  # hidden_size 2^35: a zero B of 128 GB
     "2d51d49b8c0af8d9976432022b6115ecaf2f088801494458322c3f77093b8d01"),
    ("onnx", 10162388575413506621,  # a node name that is not UTF-8 came back as bytes
     "4a9caf473395a594f26604cb542881a6e55ae0a3d01d52113429fc9dcb616b73"),
    ("rnnshrink", 2517978597327212383,  # activation alpha stored as text
     "737db21eb0a51c22c19264bed05a1c7244e6c2a957e61d66882206c2262ebb58"),
    ("rnnshrink", 7246923204356230304,  # bias dtype not a dtype
     "f66b7688508cdb7aa4823930e9099bb3f9f2cbb4d8ac23de60f436f8b709ff8e"),
    ("rnnshrink", 13117616670247988061,  # a soft link to nothing
     "1d485a925b951018fc9d1d56d82689df8323d475a0834e445c13bd5f6ebf044d"),
    ("rnnshrink", 1130228346010557339,  # notes not a JSON list
     "9f70b1ff991f5bb893ba384b461f882182bc85e2a40a778b163f0d77eefb457f"),
    ("rnnshrink", 7349076768170520033,  # unknown activation raised OptionError
     "f6398394301bc37754fb88e26c679f6b07f593091ceb085d37c216fe9bad25d4"),
]


@pytest.mark.parametrize("fmt,case_seed,digest", FINDINGS)
def test_findings_stay_fixed(seed_files, fmt, case_seed, digest):
    folder, found = seed_files
    name, data = case(fmt, found[fmt], case_seed)
    if hashlib.sha256(data).hexdigest() != digest:  # HDF5 files: bytes depend on libhdf5
        pytest.skip("the mutators no longer make this case's file on this machine")
    path = folder / f"finding{os.path.splitext(name)[1]}"
    path.write_bytes(data)
    check_read(path)

"""pip's build of onebit (pyproject.toml names setuptools as the PEP 517 backend).

The extension onebit._onebit is built by the project's CMake (target onebit_python) against the torch
that the interpreter running pip imports: its CMake files come from torch.utils.cmake_prefix_path, so
Debian's torch 1.13 here and a pip torch 2.x with CUDA elsewhere both work. Nothing is downloaded:
`pip install --no-build-isolation .` builds with what is installed.

CMake runs in build-pip/cmake-<python tag>-<hash> (one per interpreter and torch; kept between runs, so a second `pip install` or `pip wheel`
only relinks what changed; set ONEBIT_PIP_BUILD_DIR for another folder). CUDA: with a torch built
with CUDA and nvcc on PATH or in /usr/local/cuda/bin, the CUDA kernels and the NCCL backend are built
too (NCCL from CUDA's folder, NCCL_ROOT, or the nvidia.nccl Python package); with a CPU-only torch,
never. ONEBIT_CMAKE_ARGS adds CMake arguments (e.g. "-DONEBIT_WITH_CUDA=OFF"); CMAKE_BUILD_PARALLEL_LEVEL
sets the jobs (default: all cores).
"""
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name, target):
        super().__init__(name, sources=[])
        self.target = target


def _torch_facts():
    """(cmake prefix, CUDA version or None, torch version) of the torch this interpreter imports, asked
    in a child process started outside the source tree (whose torch/ folder would shadow the package)."""
    code = ("import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(torch.version.cuda or '');"
            "print(torch.__version__)")
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit("onebit: building needs torch importable by %s (the extension is built against it):\n%s"
                         % (sys.executable, e.stderr.strip()))
    prefix, cuda, version = (out.stdout.splitlines() + ["", "", ""])[:3]
    return prefix, cuda or None, version


def _cuda_args(cuda):
    """CMake arguments for CUDA: off for a CPU-only torch; else nvcc and NCCL where they are."""
    if cuda is None:
        return ["-DONEBIT_WITH_CUDA=OFF", "-DONEBIT_WITH_NCCL=OFF"]
    args = []
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None)
    if nvcc:
        args.append("-DCMAKE_CUDA_COMPILER=" + nvcc)
    nccl_root = os.environ.get("NCCL_ROOT")
    if not nccl_root and nvcc and not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include", "nccl.h")):
        try:  # pip's torch brings NCCL as the Python package nvidia.nccl (include/nccl.h, lib/libnccl.so.2)
            import nvidia.nccl as nccl_package
            path = os.path.dirname(nccl_package.__file__) if nccl_package.__file__ else list(nccl_package.__path__)[0]
            if os.path.exists(os.path.join(path, "include", "nccl.h")):
                nccl_root = path
        except ImportError:
            pass
    if nccl_root:
        args.append("-DNCCL_ROOT=" + nccl_root)
    return args


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        prefix, cuda, torch_version = _torch_facts()
        # One folder per interpreter and torch: CMake caches where it found torch.
        tag = hashlib.sha1(("%s|%s|%s" % (os.path.realpath(sys.executable), prefix, torch_version)).encode()).hexdigest()[:10]
        build_dir = os.environ.get("ONEBIT_PIP_BUILD_DIR") or os.path.join(
            ROOT, "build-pip", "cmake-%s-%s" % (sysconfig.get_config_var("SOABI"), tag))
        generator = ["-G", "Ninja"] if shutil.which("ninja") and not os.path.exists(
            os.path.join(build_dir, "Makefile")) else []
        configure = [
            "cmake", "-S", ROOT, "-B", build_dir, *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DONEBIT_PYTHON=" + sys.executable,
            "-DCMAKE_PREFIX_PATH=" + prefix,
            "-DONEBIT_WITH_TORCH=ON",   # the extension is the point: no torch is an error, not a skip
            "-DONEBIT_WITH_MPI=OFF",    # the module talks over torch.distributed
            "-DONEBIT_BUILD_TESTS=OFF", "-DONEBIT_BUILD_APPS=OFF", "-DONEBIT_BUILD_TRAIN=OFF",
            "-DCMAKE_POLICY_VERSION_MINIMUM=3.5",  # CMake 4 with older package files (torch's dependencies)
            *_cuda_args(cuda),
            *shlex.split(os.environ.get("ONEBIT_CMAKE_ARGS", "")),
        ]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        print("onebit: building against torch %s (%s) in %s" % (torch_version, "CUDA " + cuda if cuda else "CPU",
                                                                 build_dir), flush=True)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", build_dir, "--target", ext.target, "-j", jobs], check=True)
        built = os.path.join(build_dir, "python", "onebit", os.path.basename(self.get_ext_filename(ext.name)))
        if not os.path.exists(built):
            raise SystemExit("onebit: CMake did not produce %s" % built)
        destination = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(built, destination)


os.makedirs(os.path.join(ROOT, "build-pip"), exist_ok=True)
setup(
    ext_modules=[CMakeExtension("onebit._onebit", target="onebit_python")],
    cmdclass={"build_ext": CMakeBuild},
    # setuptools' own build folder would be ./build, which is the CMake build of scripts/setup.sh.
    options={"build": {"build_base": "build-pip"}, "egg_info": {"egg_base": "build-pip"}},
)

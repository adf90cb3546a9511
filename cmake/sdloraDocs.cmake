# The API reference (docs/api.md): `cmake --build build --target docs` runs Doxygen on the public headers and writes
# build/docs/html/index.html. Only when Doxygen (and awk, for docs/doxygen-filter.awk) is found, and only for the
# top-level project (a parent project may have a `docs` target of its own). Any Doxygen warning fails the target
# (WARN_AS_ERROR = FAIL_ON_WARNINGS); the test docs_api_reference (tests/package/tests.cmake) runs it too.
option(SDLORA_BUILD_DOCS "Add the `docs` target (Doxygen HTML of the public headers) when Doxygen is found"
       ${PROJECT_IS_TOP_LEVEL})
if(NOT SDLORA_BUILD_DOCS)
  return()
endif()
find_package(Doxygen QUIET)
find_program(SDLORA_AWK NAMES awk gawk mawk)
if(NOT DOXYGEN_FOUND OR NOT SDLORA_AWK)
  message(STATUS "sdlora: no `docs` target (Doxygen or awk not found)")
  return()
endif()

set(SDLORA_DOCS_OUTPUT_DIR ${PROJECT_BINARY_DIR}/docs)
set(SDLORA_DOXYFILE ${PROJECT_BINARY_DIR}/Doxyfile)
configure_file(${PROJECT_SOURCE_DIR}/docs/Doxyfile.in ${SDLORA_DOXYFILE} @ONLY)
add_custom_target(docs
  COMMAND Doxygen::doxygen ${SDLORA_DOXYFILE}
  COMMAND ${CMAKE_COMMAND} -E echo "API reference: ${SDLORA_DOCS_OUTPUT_DIR}/html/index.html"
  WORKING_DIRECTORY ${PROJECT_BINARY_DIR}
  COMMENT "Doxygen: API reference of include/sdlora"
  VERBATIM)

# ctest docs_api_reference: runs Doxygen with the configuration of the `docs` target (docs/Doxyfile.in) and fails on
# any warning or error about the public headers; checks that the HTML has the main page and a class page. Then runs
# the same configuration on tests/package/doxygen_warns.hpp, whose comment Doxygen warns about: that run must fail,
# or warnings would pass unnoticed.
# Usage: cmake -DDOXYGEN=<doxygen> -DDOXYFILE=<build>/Doxyfile -DOUTPUT_DIR=<build>/docs -DBAD_HEADER=<header>
#              -DWORK_DIR=<scratch> -P check_docs.cmake
cmake_minimum_required(VERSION 3.25)
function(fail)
  string(JOIN "" text ${ARGV})
  message(FATAL_ERROR "docs_api_reference: ${text}")
endfunction()

execute_process(COMMAND ${DOXYGEN} ${DOXYFILE} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0 OR out MATCHES "warning:|error:")
  fail("Doxygen warns about the public headers (exit ${rc}); fix the comments it names "
       "(docs/api.md says how they are written):\n${out}")
endif()
foreach(page index.html classsdlora_1_1Tensor.html)
  if(NOT EXISTS "${OUTPUT_DIR}/html/${page}")
    fail("${OUTPUT_DIR}/html/${page} was not written")
  endif()
endforeach()
file(READ "${OUTPUT_DIR}/html/index.html" index)
if(NOT index MATCHES "API reference")
  fail("${OUTPUT_DIR}/html/index.html is not docs/api.md")
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(READ "${DOXYFILE}" config)
file(WRITE "${WORK_DIR}/Doxyfile" "${config}\nINPUT = ${BAD_HEADER}\nUSE_MDFILE_AS_MAINPAGE =\nOUTPUT_DIRECTORY = ${WORK_DIR}\n")
execute_process(COMMAND ${DOXYGEN} "${WORK_DIR}/Doxyfile" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
get_filename_component(bad_name "${BAD_HEADER}" NAME)
if(rc EQUAL 0 OR NOT out MATCHES "${bad_name}")
  fail("Doxygen passed a header it warns about (exit ${rc}): WARN_AS_ERROR does not work:\n${out}")
endif()
message(STATUS "docs_api_reference: no warning; ${OUTPUT_DIR}/html/index.html")

# Doxygen INPUT_FILTER for sdlora's headers (docs/Doxyfile.in): prints each header unchanged except the text of its
# `///` comments, where the characters Doxygen would read as markup are escaped.
#
# sdlora's comments are plain text with a few @-commands (@file, @brief, @code ... @endcode) and `code spans`. They
# write paths and placeholders such as ops/<name>.hpp, checkpoint-<global_step>/ or '</w>', and regex classes such as
# \p{L} or \s; Doxygen would take those for HTML tags and \-commands and warn. So outside code spans and @code blocks a
# backslash becomes \\ and a < becomes \< (the header files themselves are not changed; line numbers are kept).
{
  at = index($0, "///")
  if (at == 0) { print; next }
  head = substr($0, 1, at + 2)
  text = substr($0, at + 3)
  if (substr(text, 1, 1) == "<") { head = head "<"; text = substr(text, 2) }  # ///< member comment
  if (text ~ /@code/) in_block = 1
  if (in_block) {
    if (text ~ /@endcode/) in_block = 0
    print; next
  }
  out = ""; in_span = 0
  for (i = 1; i <= length(text); i++) {
    c = substr(text, i, 1)
    if (c == "`") in_span = !in_span
    else if (!in_span && (c == "\\" || c == "<")) c = "\\" c
    out = out c
  }
  print head out
}

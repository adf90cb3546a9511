/// @file json_schema.hpp
/// @brief A JSON Schema (draft-07) validator for the keywords vcpkg's manifest schema uses, for the test
/// package_vcpkg_manifests (no vcpkg and no Python here). Test code, not part of the library.
///
/// Implemented: boolean schemas, type, enum, const, properties, patternProperties, additionalProperties, required,
/// dependencies, items (one schema for every element), pattern (ECMAScript, matched anywhere as the standard says),
/// minimum, format "uri", allOf, anyOf, oneOf, not, if/then/else, and $ref to a JSON pointer in the same document or
/// in another added document, relative to the referring document's $id (draft-07: the keywords next to a $ref are
/// ignored). Annotations ($schema, $id, $comment, title, description, default, examples) are skipped. Any other
/// keyword throws std::runtime_error naming it: the validator never passes a document by ignoring a rule.
#pragma once

#include <cstdint>    // std::int64_t
#include <map>        // std::map
#include <regex>      // std::regex, std::regex_search
#include <stdexcept>  // std::runtime_error
#include <string>     // std::string
#include <utility>    // std::move
#include <vector>     // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json, json_pointer

namespace sdlora::test {

/// A set of schema documents that refer to each other by $id.
class JsonSchemaSet {
 public:
  using json = nlohmann::json;

  /// Adds a schema document under its "$id" (an absolute URI).
  void add(json document) {
    if (!document.is_object() || !document.contains("$id") || !document["$id"].is_string())
      throw std::runtime_error("json_schema: a schema document needs a string \"$id\"");
    std::string const id = document["$id"].get<std::string>();
    docs_[id] = std::move(document);
  }

  /// The errors of `instance` against the document with id `uri`, one line each: "<JSON pointer>: <what is wrong>"
  /// (the pointer "" is the whole document); empty when it is valid.
  std::vector<std::string> validate(json const& instance, std::string const& uri) const {
    std::vector<std::string> errors;
    check(document(uri), uri, instance, "", errors);
    return errors;
  }

 private:
  json const& document(std::string const& uri) const {
    auto it = docs_.find(uri);
    if (it == docs_.end()) throw std::runtime_error("json_schema: no schema document " + uri);
    return it->second;
  }

  /// The schema a $ref names and the id of the document it is in. `base` is the referring document's id.
  std::pair<json const*, std::string> resolve(std::string const& ref, std::string const& base) const {
    std::size_t const hash = ref.find('#');
    std::string const file = ref.substr(0, hash);
    std::string const fragment = hash == std::string::npos ? "" : ref.substr(hash + 1);
    std::string uri = base;
    if (!file.empty())
      uri = file.find("://") != std::string::npos ? file : base.substr(0, base.rfind('/') + 1) + file;
    json const& doc = document(uri);
    if (fragment.empty()) return {&doc, uri};
    json::json_pointer const pointer(fragment);
    if (!doc.contains(pointer)) throw std::runtime_error("json_schema: $ref " + ref + " names nothing in " + uri);
    return {&doc.at(pointer), uri};
  }

  std::regex const& regex(std::string const& pattern) const {
    auto it = regexes_.find(pattern);
    if (it == regexes_.end()) it = regexes_.emplace(pattern, std::regex(pattern, std::regex::ECMAScript)).first;
    return it->second;
  }

  static bool has_type(json const& x, std::string const& type) {
    if (type == "object") return x.is_object();
    if (type == "array") return x.is_array();
    if (type == "string") return x.is_string();
    if (type == "boolean") return x.is_boolean();
    if (type == "null") return x.is_null();
    if (type == "number") return x.is_number();
    if (type == "integer")
      return x.is_number_integer() || (x.is_number_float() && x.get<double>() == double(std::int64_t(x.get<double>())));
    throw std::runtime_error("json_schema: unknown type \"" + type + "\"");
  }

  static std::string brief(json const& x) {
    std::string s = x.dump();
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
  }

  /// Whether `x` is valid against `schema`; the errors of the alternative go to `first_error`.
  bool matches(json const& schema, std::string const& base, json const& x, std::string const& ptr,
               std::string* first_error = nullptr) const {
    std::vector<std::string> errors;
    check(schema, base, x, ptr, errors);
    if (first_error && !errors.empty()) *first_error = errors.front();
    return errors.empty();
  }

  void check(json const& schema, std::string const& base, json const& x, std::string const& ptr,
             std::vector<std::string>& errors) const {
    std::string const at = ptr.empty() ? "/" : ptr;
    if (schema.is_boolean()) {
      if (!schema.get<bool>()) errors.push_back(at + ": not allowed here (schema false)");
      return;
    }
    if (!schema.is_object()) throw std::runtime_error("json_schema: a schema is an object or a boolean");
    if (schema.contains("$ref")) {
      auto const [target, uri] = resolve(schema["$ref"].get<std::string>(), base);
      check(*target, uri, x, ptr, errors);
      return;
    }
    bool object_rules_done = false;
    for (auto const& [key, value] : schema.items()) {
      if (key == "$schema" || key == "$id" || key == "$comment" || key == "title" || key == "description" ||
          key == "default" || key == "examples" || key == "then" || key == "else")
        continue;  // annotations; then/else are read with "if"
      if (key == "type") {
        bool ok = false;
        if (value.is_string()) ok = has_type(x, value.get<std::string>());
        if (value.is_array())
          for (auto const& t : value) ok = ok || has_type(x, t.get<std::string>());
        if (!ok) errors.push_back(at + ": " + brief(x) + " is not of type " + value.dump());
      } else if (key == "enum") {
        bool found = false;
        for (auto const& v : value) found = found || v == x;
        if (!found) errors.push_back(at + ": " + brief(x) + " is not one of " + value.dump());
      } else if (key == "const") {
        if (x != value) errors.push_back(at + ": " + brief(x) + " is not " + value.dump());
      } else if (key == "properties" || key == "patternProperties" || key == "additionalProperties") {
        if (object_rules_done || !x.is_object()) continue;
        object_rules_done = true;
        static json const kNone = json::object();
        json const& patterns = schema.contains("patternProperties") ? schema["patternProperties"] : kNone;
        for (auto const& [name, v] : x.items()) {
          std::string const child = ptr + "/" + name;
          bool known = false;
          if (schema.contains("properties") && schema["properties"].contains(name)) {
            known = true;
            check(schema["properties"][name], base, v, child, errors);
          }
          for (auto const& [pattern, sub] : patterns.items()) {
            if (!std::regex_search(name, regex(pattern))) continue;
            known = true;
            check(sub, base, v, child, errors);
          }
          if (!known && schema.contains("additionalProperties")) {
            json const& extra = schema["additionalProperties"];
            if (extra.is_boolean() && !extra.get<bool>())
              errors.push_back(child + ": no property \"" + name + "\" is allowed here");
            else
              check(extra, base, v, child, errors);
          }
        }
      } else if (key == "required") {
        if (!x.is_object()) continue;
        for (auto const& name : value)
          if (!x.contains(name.get<std::string>()))
            errors.push_back(at + ": the property \"" + name.get<std::string>() + "\" is required");
      } else if (key == "dependencies") {
        if (!x.is_object()) continue;
        for (auto const& [name, rule] : value.items()) {
          if (!x.contains(name)) continue;
          if (rule.is_array()) {
            for (auto const& other : rule)
              if (!x.contains(other.get<std::string>()))
                errors.push_back(at + ": \"" + name + "\" needs \"" + other.get<std::string>() + "\"");
          } else {
            check(rule, base, x, ptr, errors);
          }
        }
      } else if (key == "items") {
        if (!value.is_object() && !value.is_boolean())
          throw std::runtime_error("json_schema: unsupported keyword \"items\" with an array (tuple validation)");
        if (!x.is_array()) continue;
        for (std::size_t i = 0; i < x.size(); ++i) check(value, base, x[i], ptr + "/" + std::to_string(i), errors);
      } else if (key == "pattern") {
        if (x.is_string() && !std::regex_search(x.get<std::string>(), regex(value.get<std::string>())))
          errors.push_back(at + ": " + brief(x) + " does not match the pattern " + value.get<std::string>());
      } else if (key == "minimum") {
        if (x.is_number() && x.get<double>() < value.get<double>())
          errors.push_back(at + ": " + brief(x) + " is less than the minimum " + value.dump());
      } else if (key == "format") {
        if (value != "uri") throw std::runtime_error("json_schema: unsupported format " + value.dump());
        if (x.is_string() && !std::regex_search(x.get<std::string>(), regex("^[A-Za-z][A-Za-z0-9+.-]*:[^\\s]*$")))
          errors.push_back(at + ": " + brief(x) + " is not a URI");
      } else if (key == "allOf") {
        for (auto const& sub : value) check(sub, base, x, ptr, errors);
      } else if (key == "anyOf" || key == "oneOf") {
        std::vector<std::size_t> matched;
        std::string why;
        for (std::size_t i = 0; i < value.size(); ++i) {
          std::string error;
          if (matches(value[i], base, x, ptr, &error))
            matched.push_back(i);
          else
            why += (why.empty() ? "" : "; ") + std::to_string(i + 1) + ": " + error;
        }
        if (matched.empty())
          errors.push_back(at + ": " + brief(x) + " matches none of the " + key + " alternatives (" + why + ")");
        else if (key == "oneOf" && matched.size() > 1)
          errors.push_back(at + ": matches " + std::to_string(matched.size()) +
                           " of the oneOf alternatives, exactly one is allowed");
      } else if (key == "not") {
        if (matches(value, base, x, ptr))
          errors.push_back(at + ": " + brief(x) + " must not match " +
                           (value.is_object() && value.contains("$ref") ? value["$ref"].get<std::string>()
                                                                         : brief(value)));
      } else if (key == "if") {
        char const* branch = matches(value, base, x, ptr) ? "then" : "else";
        if (schema.contains(branch)) check(schema[branch], base, x, ptr, errors);
      } else {
        throw std::runtime_error("json_schema: unsupported keyword \"" + key + "\" (at " + base + ")");
      }
    }
  }

  std::map<std::string, json> docs_;
  mutable std::map<std::string, std::regex> regexes_;
};

}  // namespace sdlora::test

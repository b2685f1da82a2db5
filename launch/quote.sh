# Sourced by the launch scripts (bash).

# Prints its arguments as one shell-safe line (plain words stay unquoted).
quote() {
  local out=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$word")
    elif [[ "$word" != *"'"* ]]; then
      out+=("'${word}'")
    elif [[ "$word" != *[\"\$\`\\!]* ]]; then
      out+=("\"${word}\"")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  local IFS=' '
  printf '%s\n' "${out[*]}"
}

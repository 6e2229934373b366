# Bash completion for dogpile(1): subcommands, their options, directories for
# --dir and compact's DEST, files for --modtime, variables for --env, region
# names for --region and the REGION of ls, clear and invalidate, and the
# command exec runs. Installed as bash-completion/completions/dogpile; works
# sourced on its own too.
#
# The lists below must match what `dogpile --help` and `dogpile COMMAND
# --help` print (tests/cli_discover_test.py compares them).

# The subcommands, and `help`.
_dogpile_commands() {
  echo 'stats ls get rm purge clear invalidate verify compact exec demo help'
}

# The options of subcommand $1; with no subcommand, dogpile's own.
_dogpile_options() {
  local common='-h --help --dir --json'
  case $1 in
    '') echo '-h --help --version' ;;
    verify | compact) echo "$common" ;;
    stats) echo "$common --zero --region" ;;
    purge) echo "$common --older-than" ;;
    ls) echo "$common --prefix --limit" ;;
    get) echo "$common --region --raw" ;;
    rm) echo "$common --region" ;;
    clear) echo "$common --all" ;;
    invalidate) echo "$common --soft --create" ;;
    exec)
      echo "$common --ttl --stale --cwd --env --modtime --discard-failures --cache-signals" \
        "--ignore-stdin --max-output --max-input --warm --force --scope"
      ;;
    demo) echo "$common --workers --keys --create-ms --fresh" ;;
  esac
}

# Whether option $1 takes a value (the next word).
_dogpile_takes_value() {
  case $1 in
    --dir | --prefix | --limit | --region | --ttl | --stale | --env | --modtime | --scope | \
      --max-output | --max-input | --older-than | --workers | --keys | --create-ms) return 0 ;;
  esac
  return 1
}

# The region names of the cache in directory $2 (the default one when empty),
# read with dogpile $1 stats --json, which never creates a cache. Names JSON
# had to escape are left out.
_dogpile_regions() {
  "$1" stats --json ${2:+--dir "$2"} 2>/dev/null |
    sed -n '/"regions": \[/,/"total": {/{/\\/d; s/^ *"name": "\(.*\)",$/\1/p;}'
}

# COMPREPLY: the lines of stdin that start with $1, quoted for the shell
# (file names are not: -o filenames has readline quote them).
_dogpile_reply_lines() {
  local line
  COMPREPLY=()
  while IFS= read -r line; do
    [[ $line == "$1"* ]] && COMPREPLY+=("$(printf '%q' "$line")")
  done
}

_dogpile() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
  local command='' command_at=0 dir='' i word
  for ((i = 1; i <= COMP_CWORD; i++)); do
    word=${COMP_WORDS[i]}
    if [[ $command == exec ]] && ! _dogpile_takes_value "${COMP_WORDS[i - 1]}" &&
      { [[ $word == -- ]] && ((i < COMP_CWORD)) || [[ $word != -* ]]; }; then
      # exec's CMD from here on: complete it as that command's own words.
      [[ $word == -- ]] && ((i++))
      if ((i == COMP_CWORD)); then
        _dogpile_reply_lines "$cur" < <(compgen -c -- "$cur" | sort -u)
      elif declare -F _command_offset >/dev/null; then
        _command_offset "$i"
      else
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      fi
      return 0
    fi
    ((i == COMP_CWORD)) && break
    if [[ $word == --dir ]] && ((i + 1 < COMP_CWORD)); then
      dir=${COMP_WORDS[i + 1]}
    elif [[ -z $command && $word != -* ]]; then
      command=$word
      command_at=$i
    fi
  done

  if [[ -z $command ]]; then
    if [[ $cur == -* ]]; then
      _dogpile_reply_lines "$cur" < <(printf '%s\n' $(_dogpile_options ''))
    else
      _dogpile_reply_lines "$cur" < <(printf '%s\n' $(_dogpile_commands))
    fi
    return 0
  fi
  if [[ $command == help ]]; then
    ((COMP_CWORD == command_at + 1)) &&
      _dogpile_reply_lines "$cur" < <(printf '%s\n' $(_dogpile_commands))
    return 0
  fi

  if ((COMP_CWORD > command_at + 1)) && _dogpile_takes_value "$prev"; then
    case $prev in
      --dir)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
        ;;
      --modtime)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        ;;
      --env) _dogpile_reply_lines "$cur" < <(compgen -e -- "$cur") ;;
      --region) _dogpile_reply_lines "$cur" < <(_dogpile_regions "${COMP_WORDS[0]}" "$dir") ;;
      *) COMPREPLY=() ;;
    esac
    return 0
  fi
  if [[ $cur == -* ]]; then
    _dogpile_reply_lines "$cur" < <(printf '%s\n' $(_dogpile_options "$command"))
    return 0
  fi
  case $command in
    ls | clear | invalidate)
      _dogpile_reply_lines "$cur" < <(_dogpile_regions "${COMP_WORDS[0]}" "$dir")
      ;;
    compact)
      compopt -o filenames 2>/dev/null
      mapfile -t COMPREPLY < <(compgen -d -- "$cur")
      ;;
    *) COMPREPLY=() ;;
  esac
  return 0
}

complete -F _dogpile dogpile

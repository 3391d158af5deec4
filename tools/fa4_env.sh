# Source on the GPU machine to make FA4 (flash-attn-4 4.0.0b36) importable for the side-by-side benchmark columns.
# The wheels travel in two runs (../shared/anchors/fa4_on_device.md): run 1 carries .fa4a and calls
#   bash tools/fa4_env.sh stash            (keeps .fa4a/partaa in $HOME/parts while the machine stays warm)
# run 2, started at once, carries .fa4b and does
#   source tools/fa4_env.sh                (joins the parts, installs into $HOME/site, extends PYTHONPATH)
# Prints one line; on failure FA4 columns show n/a and everything else still runs.
if [ "${1:-}" = "stash" ]; then
    mkdir -p "$HOME/parts" && cp .fa4a/partaa "$HOME/parts/" && echo "fa4: part a stashed in $HOME/parts"
    return 0 2>/dev/null || exit 0
fi
_fa4_whl="$(mktemp -d)/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl"
if [ -f "$HOME/parts/partaa" ] && [ -f .fa4b/partab ]; then
    cat "$HOME/parts/partaa" .fa4b/partab >"$_fa4_whl" &&
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$HOME/site" .fa4b/*.whl "$_fa4_whl" &&
        export PYTHONPATH="$HOME/site:$HOME/site/nvidia_cutlass_dsl/dsl_packages:${PYTHONPATH:-}" &&
        python3 -c "from flash_attn.cute.interface import flash_attn_varlen_func" 2>/dev/null &&
        echo "fa4: installed into $HOME/site" || echo "fa4: install FAILED (FA4 columns will be n/a)"
else
    echo "fa4: parts missing (run 1 not on this machine?): FA4 columns will be n/a"
fi

#!/usr/bin/env bash
# fetch-kernel.sh LABEL — download one Debian cloud kernel into the VM cache and
# extract what a test VM needs: vmlinuz and a decompressed, depmod-ed module
# tree holding only the networking modules the tests use (plus dependencies).
#
# LABEL is 5.10, 6.1, 6.12, newest, or X.Y (a trixie-backports
# linux-image-X.Y-cloud-amd64 meta package). The system's apt sources are never
# touched: a private APT_CONFIG with its own lists and archives lives under
# $VM_CACHE/apt/<suite-set>.
#
# Output: $VM_CACHE/kernels/<LABEL>/{vmlinuz,kver,modroot/lib/modules/<kver>,load.list}
set -euo pipefail

label=${1:?usage: fetch-kernel.sh LABEL}
cache=${VM_CACHE:-$HOME/.cache/flowtrace/vm}
here=$(cd "$(dirname "$0")" && pwd)
out=$cache/kernels/$label

log() { printf 'vm-fetch %s: %s\n' "$label" "$*" >&2; }

# Which suite ships which kernel; verified in shared/VM.md. bookworm's own
# kernel meta package moves to the security suite's newer ABI, so both are
# listed and apt picks the candidate with the highest version.
case $label in
5.10) suites="debian-security:bullseye-security"; meta=linux-image-cloud-amd64 ;;
6.1) suites="debian:bookworm debian-security:bookworm-security"; meta=linux-image-cloud-amd64 ;;
6.12) suites="debian-security:bookworm-security"; meta=linux-image-6.12-cloud-amd64 ;;
newest) suites="debian:trixie-backports"; meta=linux-image-cloud-amd64 ;;
[0-9]*.[0-9]*) suites="debian:trixie-backports"; meta=linux-image-$label-cloud-amd64 ;;
*)
	echo "fetch-kernel.sh: unknown kernel label $label (want 5.10, 6.1, 6.12, newest or X.Y)" >&2
	exit 2
	;;
esac

# Resolve every package once per run of the matrix, but a cached kernel is
# reused as long as the meta package still resolves to it: ABI bumps in the
# archive then fetch the new kernel, and an offline rerun keeps working.
archive_uri() {
	# Reuse the machine's archive host (the same URIs as its Debian sources).
	local want=$1 uri
	uri=$(grep -hoE '^(URIs:|deb) *[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
		awk '{print $2}' | grep -E "/$want/?\$" | head -n1 || true)
	case $want in
	debian) echo "${uri:-http://deb.debian.org/debian}" ;;
	debian-security) echo "${uri:-http://deb.debian.org/debian-security}" ;;
	esac
}

aptdir=$cache/apt/$(echo "$suites" | tr ' :' '_-')
mkdir -p "$aptdir"/{lists/partial,archives/partial,parts,prefs} "$out"
: >"$aptdir/status"
{
	for s in $suites; do
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(archive_uri "${s%%:*}") ${s#*:} main"
	done
} >"$aptdir/sources.list"
cat >"$aptdir/apt.conf" <<EOF
Dir::Etc::SourceList "$aptdir/sources.list";
Dir::Etc::SourceParts "$aptdir/parts";
Dir::Etc::Preferences "$aptdir/prefs/none";
Dir::Etc::PreferencesParts "$aptdir/prefs";
Dir::State "$aptdir";
Dir::State::Lists "$aptdir/lists";
Dir::State::status "$aptdir/status";
Dir::Cache "$aptdir";
Dir::Cache::archives "$aptdir/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::Retries "3";
APT::Sandbox::User "root";
EOF
export APT_CONFIG=$aptdir/apt.conf
# Labels that share a suite set (newest and X.Y) share this index: one at a time.
exec 9>"$aptdir/lock"
flock 9

# Refresh the private index at most every 12 hours.
stamp=$aptdir/updated
if [[ ! -f $stamp ]] || [[ -n $(find "$stamp" -mmin +720 2>/dev/null) ]]; then
	log "apt-get update ($suites)"
	if apt-get -qq update >"$aptdir/update.log" 2>&1; then
		touch "$stamp"
	elif [[ -f $out/vmlinuz ]]; then
		log "apt-get update failed; reusing cached kernel $(cat "$out/kver")"
		exit 0
	else
		cat "$aptdir/update.log" >&2
		exit 1
	fi
fi

# Walk the meta package's dependencies down to the packages that hold files:
# linux-image-<abi> on <= 6.x, linux-binary-* + linux-modules-* on 7.x.
declare -A seen=()
pkgs=()
walk() {
	local p=$1 deps d
	[[ -n ${seen[$p]:-} ]] && return
	seen[$p]=1
	pkgs+=("$p")
	deps=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances "$p" 2>/dev/null |
		awk '$1 ~ /^\|?(Pre)?Depends:$/ {print $2}' | grep -E '^linux-(image|binary|modules)-' || true)
	for d in $deps; do walk "$d"; done
}
if ! apt-cache show "$meta" >/dev/null 2>&1; then
	echo "fetch-kernel.sh: $meta not found in $suites" >&2
	exit 1
fi
walk "$meta"
# Meta packages hold no files (and an archive may no longer serve old ones):
# fetch only the ABI-versioned packages, e.g. linux-image-5.10.0-46-cloud-amd64.
versions=()
for p in "${pkgs[@]}"; do
	[[ $p =~ [0-9]+\.[0-9]+\.[0-9]+ ]] || continue
	versions+=("$p=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')")
done
# The cache key also covers the module list and this script, so changing
# either re-extracts.
recipe=$(cat "$here/modules.list" "$0" | sha256sum | cut -c1-12)
want="$(printf '%s\n' "${versions[@]}" | sort | tr '\n' ' ')recipe=$recipe"
if [[ -f $out/vmlinuz && -f $out/packages && $(cat "$out/packages") == "$want" ]]; then
	log "cached: $(cat "$out/kver") ($want)"
	exit 0
fi

log "download: $want"
dl=$aptdir/archives
(cd "$dl" && apt-get -qq download "${versions[@]}")

stage=$out.tmp
rm -rf "$stage"
mkdir -p "$stage/x"
for v in "${versions[@]}"; do
	p=${v%%=*}
	deb=$(ls -t "$dl/${p}_"*.deb | head -n1)
	dpkg-deb -x "$deb" "$stage/x"
done

vmlinuz=$(find "$stage/x/boot" "$stage/x/usr/lib/modules" "$stage/x/lib/modules" -maxdepth 2 \
	\( -name 'vmlinuz-*' -o -name vmlinuz \) 2>/dev/null | head -n1 || true)
[[ -n $vmlinuz ]] || {
	echo "fetch-kernel.sh: no vmlinuz in ${pkgs[*]}" >&2
	exit 1
}
moddir=$(find "$stage/x/lib/modules" "$stage/x/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | head -n1 || true)
kver=$(basename "$moddir")
cp "$vmlinuz" "$stage/vmlinuz"

# Resolve the module closure with the host's kmod against the extracted tree.
modbase=${moddir%/lib/modules/*}
depmod -b "$modbase" "$kver" 2>/dev/null
want_mods=$(grep -vE '^\s*(#|$)' "$here/modules.list")
root=$stage/modroot
dst=$root/lib/modules/$kver
mkdir -p "$dst"
: >"$stage/load.list"
missing=()
for m in $want_mods; do
	if ! deps=$(modprobe -d "$modbase" -S "$kver" --show-depends "$m" 2>/dev/null); then
		missing+=("$m")
		continue
	fi
	while read -r kind path _; do
		[[ $kind == insmod ]] || continue
		rel=${path#"$moddir"/}
		plain=${rel%.xz}
		plain=${plain%.zst}
		plain=${plain%.gz}
		if [[ ! -f $dst/$plain ]]; then
			mkdir -p "$dst/$(dirname "$plain")"
			case $path in
			*.xz) xz -dc "$path" >"$dst/$plain" ;;
			*.zst) zstd -qdc "$path" >"$dst/$plain" ;;
			*.gz) gzip -dc "$path" >"$dst/$plain" ;;
			*) cp "$path" "$dst/$plain" ;;
			esac
			echo "/lib/modules/$kver/$plain" >>"$stage/load.list"
		fi
	done <<<"$deps"
done
# modules.builtin lets modprobe in the guest treat built-in features as present;
# depmod on the pruned tree gives the guest's modprobe (run by the kernel for
# request_module, e.g. nft expressions) a consistent view.
cp "$moddir"/modules.order "$moddir"/modules.builtin* "$dst/" 2>/dev/null || true
depmod -b "$root" "$kver" 2>&1 | grep -v 'could not open modules\.' >&2 || true
echo "$kver" >"$stage/kver"
printf '%s\n' "${missing[@]}" >"$stage/builtin-or-missing"
echo "$want" >"$stage/packages"
rm -rf "$stage/x"
summary="$(wc -l <"$stage/load.list") modules ($(du -sh "$root" | cut -f1)), not modules here: ${missing[*]:-none}"
rm -rf "$out"
mv "$stage" "$out"
log "ready: $kver, $summary"

# Tandem A/B slot choice for U-Boot (hush). Install: agent/boot/README.md.
#   mkimage -A arm64 -O linux -T script -C none -d boot.cmd boot.scr
#
# This is agent/boot-control/boot-decision.ts (decideBoot) in U-Boot script,
# step for step, with the same variables; change both together
# (test/agent/boot-scripts.test.ts checks that they agree, and
# test/boot-qemu/uboot.test.ts boots the real U-Boot on this script and holds
# every boot, and the tandem.env it leaves, to decideBoot).
#
# The state lives in its own file on a FAT partition, in the single-copy
# fw_env format (CRC + NUL-separated pairs), as CONFIG_ENV_IS_IN_FAT does:
# the agent's uboot backend and fw_setenv edit it with the config line
# "<file> 0x0 0x4000". U-Boot's saveenv is not used, so the board's own env
# is never touched. Settings (board env, else these defaults):
#   tandem_if    interface of the partition holding the file   (virtio)
#   tandem_part  device:partition                              (0:1)
#   tandem_file  file name                                     (tandem.env)
#   tandem_size  bytes, CRC included; the agent's uboot `size` (0x4000)
# Out: tandem_slot (hush local) = A or B, and `tandem.slot=<slot>` appended to bootargs.
# Hush locals (name=value) are used for temporaries: env export never saves them.

if test -z "${tandem_if}"; then tandem_if=virtio; fi
if test -z "${tandem_part}"; then tandem_part=0:1; fi
if test -z "${tandem_file}"; then tandem_file=tandem.env; fi
if test -z "${tandem_size}"; then tandem_size=0x4000; fi

# What the file does not set stays unset (env import with a list also deletes
# listed names the file lacks). If the file is missing or its CRC is bad, all
# stay unset and the safe default below boots slot A. ${kernel_addr_r}, not
# ${scriptaddr}: this script is running from there.
setenv TANDEM_ACTIVE
setenv TANDEM_TRIAL
setenv TANDEM_TRIES
setenv TANDEM_A_GOOD
setenv TANDEM_B_GOOD
setenv TANDEM_BOOTED
setenv TANDEM_FALLBACK
if load ${tandem_if} ${tandem_part} ${kernel_addr_r} ${tandem_file} && env import -c ${kernel_addr_r} ${tandem_size} TANDEM_ACTIVE TANDEM_TRIAL TANDEM_TRIES TANDEM_A_GOOD TANDEM_B_GOOD TANDEM_BOOTED TANDEM_FALLBACK; then
  tandem_loaded=1
else
  echo "TANDEM WARN env import failed: ${tandem_file}"
fi

tandem_slot=
tandem_save=0
if test "${TANDEM_ACTIVE}" = A; then tandem_slot=A; tandem_other=B; fi
if test "${TANDEM_ACTIVE}" = B; then tandem_slot=B; tandem_other=A; fi

if test -z "${tandem_slot}"; then
  # No valid TANDEM_ACTIVE: the last good slot if only B is marked good, else A. Nothing is written.
  tandem_slot=A
  if test "${TANDEM_B_GOOD}" = 1 && test "${TANDEM_A_GOOD}" != 1; then tandem_slot=B; fi
elif test "${TANDEM_TRIAL}" = 1; then
  # On trial: spend one try. A table, like the GRUB script; anything but 1..9
  # counts as no tries left, so garbage falls back instead of looping.
  tandem_left=
  if test "${TANDEM_TRIES}" = 1; then tandem_left=0
  elif test "${TANDEM_TRIES}" = 2; then tandem_left=1
  elif test "${TANDEM_TRIES}" = 3; then tandem_left=2
  elif test "${TANDEM_TRIES}" = 4; then tandem_left=3
  elif test "${TANDEM_TRIES}" = 5; then tandem_left=4
  elif test "${TANDEM_TRIES}" = 6; then tandem_left=5
  elif test "${TANDEM_TRIES}" = 7; then tandem_left=6
  elif test "${TANDEM_TRIES}" = 8; then tandem_left=7
  elif test "${TANDEM_TRIES}" = 9; then tandem_left=8
  fi
  if test -n "${tandem_left}"; then
    setenv TANDEM_TRIES ${tandem_left}
    setenv TANDEM_BOOTED ${tandem_slot}
    tandem_save=1
  else
    # Tries exhausted: fall back to the other slot, end the trial, record why.
    setenv TANDEM_FALLBACK ${tandem_slot}
    if test "${tandem_slot}" = A; then setenv TANDEM_A_GOOD 0; else setenv TANDEM_B_GOOD 0; fi
    tandem_slot=${tandem_other}
    setenv TANDEM_ACTIVE ${tandem_slot}
    setenv TANDEM_TRIAL 0
    setenv TANDEM_TRIES 0
    setenv TANDEM_BOOTED ${tandem_slot}
    tandem_save=1
  fi
elif test "${TANDEM_BOOTED}" != "${tandem_slot}"; then
  # Record the slot only when it changes: a device on its good slot never writes.
  setenv TANDEM_BOOTED ${tandem_slot}
  tandem_save=1
fi

if test "${tandem_save}" = 1; then
  # Not power-fail safe on FAT (fatwrite rewrites the file): a torn file fails
  # its CRC and the next boot takes the safe default. Use two files or a
  # redundant raw env on a product that cannot afford that.
  if env export -c -s ${tandem_size} ${kernel_addr_r} TANDEM_ACTIVE TANDEM_TRIAL TANDEM_TRIES TANDEM_A_GOOD TANDEM_B_GOOD TANDEM_BOOTED TANDEM_FALLBACK && fatwrite ${tandem_if} ${tandem_part} ${kernel_addr_r} ${tandem_file} ${tandem_size}; then
    tandem_saved=1
  elif test "${TANDEM_TRIAL}" = 1; then
    # A trial that cannot count its tries could boot a broken slot forever: not this time.
    echo "TANDEM WARN save failed, trial of ${tandem_slot} not started"
    tandem_slot=${tandem_other}
  else
    echo "TANDEM WARN save failed"
  fi
fi

echo "TANDEM BOOT slot=${tandem_slot} tries=${TANDEM_TRIES} fallback_from=${TANDEM_FALLBACK}"
setenv bootargs "${bootargs} tandem.slot=${tandem_slot}"
# Next, the board's own commands load the kernel of ${tandem_slot}, e.g.:
#   if test "${tandem_slot}" = B; then setenv bootargs "${bootargs} root=PARTLABEL=root_b"; else setenv bootargs "${bootargs} root=PARTLABEL=root_a"; fi

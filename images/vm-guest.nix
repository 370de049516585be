# The microVM guest image, built by Nix: nixpkgs' kernel and the closure of the modules a guest
# needs (virtio PCI, virtio-console, virtiofs, vsock, virtio-net), static busybox and the static
# guest agent, assembled by the same `aspen vm image build` that builds the Debian image. Both
# images boot the same agent as /init, so the runner treats them alike.
{ pkgs, aspen, agent }:

let
  kernel = pkgs.linuxPackages.kernel;
  modules = pkgs.makeModulesClosure {
    inherit kernel;
    # No firmware: the guest's devices are all virtio.
    firmware = pkgs.runCommand "no-firmware" { } "mkdir -p $out/lib/firmware";
    rootModules = [ "virtio_pci" "virtio_console" "virtiofs" "vmw_vsock_virtio_transport" "virtio_net" ];
    # Modules built into this kernel are not files; the image builder finds them in
    # modules.builtin.
    allowMissing = true;
  };
in
pkgs.runCommand "aspen-vm-image-${kernel.modDirVersion}"
  {
    nativeBuildInputs = [ aspen pkgs.xz ];
    passthru = { inherit kernel agent; };
  }
  ''
    export HOME=$TMPDIR
    aspen vm image build --out $out \
      --agent ${agent}/bin/aspen-vm-agent \
      --kernel ${kernel}/${pkgs.stdenv.hostPlatform.linux-kernel.target} \
      --modules ${modules}/lib/modules/${kernel.modDirVersion} \
      --busybox ${pkgs.pkgsStatic.busybox}/bin/busybox
  ''

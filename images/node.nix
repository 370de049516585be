# A cluster-node image. Build it with `nix build .#image-qcow2` (a qcow2 disk with an EFI
# system partition) or `nix build .#image-iso`, both from `system.build.images`.
#
# The node joins a cluster from a ticket placed on the boot partition, as
# `/boot/aspen/join.ticket` (the `joinTicketImport` of the module: copied into the data
# directory for the `aspen` user when it appears, so the image can boot before the ticket is
# there). Set `services.aspen.initialize = true` (and no ticket) for the image of a cluster's
# first node. See docs/nixos.md.
{ lib, ... }:

{
  imports = [ ../modules/aspen-node.nix ];

  services.aspen = {
    enable = true;
    # Every interface, advertised as found at start (a DHCP address included).
    listenAddress = lib.mkDefault "0.0.0.0";
    openFirewall = lib.mkDefault true;
    joinTicketImport = lib.mkDefault "/boot/aspen/join.ticket";
  };

  networking.hostName = lib.mkDefault "aspen-node";
  networking.useDHCP = lib.mkDefault true;
  services.openssh.enable = lib.mkDefault false;

  # The image variants (system.build.images.qemu-efi, .iso) bring their own boot loader and
  # file systems; the disk grows to fill whatever it is written to.
  boot.growPartition = true;

  system.stateVersion = "25.11";
}

# The example three-node cluster of the flake's nixosConfigurations (node1 .. node3): static
# addresses on one LAN, node1 initializes, node2 and node3 join from the ticket an operator
# copies from node1's /var/lib/aspen/join.ticket into theirs.
{ id, address }:
{ lib, ... }:

{
  services.aspen = {
    enable = true;
    nodeId = id;
    listenAddress = address;
    openFirewall = true;
    initialize = id == 1;
    joinTicketFile = if id == 1 then null else "/var/lib/aspen/join.ticket";
  };

  networking.hostName = "aspen${toString id}";
  networking.interfaces.eth0.ipv4.addresses = [ { address = address; prefixLength = 24; } ];
  boot.loader.grub.device = lib.mkDefault "/dev/vda";
  fileSystems."/" = lib.mkDefault { device = "/dev/vda1"; fsType = "ext4"; };
  system.stateVersion = "25.11";
}

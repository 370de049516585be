# What every machine of the VM tests shares: services.aspen on the machine's own address,
# with fast Raft timers, the aspen CLI and jq.
{ pkgs, module, aspen }:

{ config, ... }: {
  imports = [ module ];
  services.aspen = {
    enable = true;
    package = aspen;
    listenAddress = config.networking.primaryIPAddress;
    openFirewall = true;
    extraFlags = [ "--heartbeat-ms" "100" "--election-timeout-ms" "600" ];
  };
  environment.systemPackages = [ aspen pkgs.jq ];
  virtualisation.memorySize = 1024;
}

-- Routes s2s for configured domains to a fixed host:port (Prosody 0.12 has no
-- option for it). Used by xmppfed's tests to federate with a gateway on a
-- loopback port: xmppfed_routes = { ["teams.test"] = { "127.0.0.1", 15269 } }
local basic = require "net.resolvers.basic";
local service = require "net.resolvers.service";

local routes = module:get_option("xmppfed_routes", {});
local original_new = service.new;

local nothing = { next = function(_, cb) cb(nil); end };

service.new = function(hostname, service_name, conn_type, extra)
	local route = routes[hostname];
	if route then
		if service_name == "xmpp-server" then
			return basic.new(route[1], route[2], conn_type, extra);
		elseif service_name == "xmpps-server" then
			return nothing;
		end
	end
	return original_new(hostname, service_name, conn_type, extra);
end

function module.unload()
	service.new = original_new;
end

#!/usr/bin/env bash
# Real mail servers for the email tests and benchmarks: Dovecot (IMAP with
# IDLE, IMAPS, LMTP) and Postfix (SMTP) on loopback ports, everything under
# one folder, nothing system-wide.
#
#   scripts/mailservers.sh start DIR IMAP_PORT IMAPS_PORT LMTP_PORT SMTP_PORT [USER...]
#   scripts/mailservers.sh stop DIR
#
# Postfix takes mail for the domains example.test and customer.test on
# SMTP_PORT and hands it to Dovecot over LMTP; every USER (an address in one
# of those domains) gets a mailbox with the password `secret`. DIR/tls holds
# a small CA (ca.crt) and a leaf certificate for `localhost`/127.0.0.1 used by
# IMAPS and STARTTLS (IMAP and SMTP). Needs root (Postfix) and the Debian packages
# dovecot-imapd, dovecot-lmtpd and postfix (scripts/test.sh installs them).
set -euo pipefail

die() { echo "mailservers.sh: $*" >&2; exit 1; }

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR ..."

stop() {
    local dir=$1
    if [ -f "$dir/postfix/main.cf" ]; then
        postfix -c "$dir/postfix" stop >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/dovecot/dovecot.conf" ]; then
        doveadm -c "$dir/dovecot/dovecot.conf" stop >/dev/null 2>&1 || true
    fi
    # Wait (bounded) for both masters to go away.
    for _ in $(seq 1 50); do
        local alive=0
        for pidfile in "$dir/postfix/queue/pid/master.pid" "$dir/dovecot/run/master.pid"; do
            if [ -f "$pidfile" ]; then
                local pid
                pid=$(tr -d ' \n' <"$pidfile")
                if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then alive=1; fi
            fi
        done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    for pidfile in "$dir/postfix/queue/pid/master.pid" "$dir/dovecot/run/master.pid"; do
        if [ -f "$pidfile" ]; then
            pid=$(tr -d ' \n' <"$pidfile")
            [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

if [ "$cmd" = stop ]; then
    stop "$dir"
    exit 0
fi
[ "$cmd" = start ] || die "unknown command $cmd"
[ $# -ge 6 ] || die "usage: $0 start DIR IMAP_PORT IMAPS_PORT LMTP_PORT SMTP_PORT [USER...]"
imap_port=$3 imaps_port=$4 lmtp_port=$5 smtp_port=$6
shift 6
users=("$@")

[ "$(id -u)" = 0 ] || die "must run as root (Postfix needs it)"
for tool in dovecot doveadm postfix postconf openssl; do
    command -v "$tool" >/dev/null || die "missing $tool: apt-get install dovecot-imapd dovecot-lmtpd postfix openssl"
done

dir=$(cd "$dir" && pwd)
chmod 755 "$dir"
mkdir -p "$dir/tls" "$dir/dovecot/run" "$dir/dovecot/state" "$dir/mail" "$dir/postfix/queue" "$dir/postfix/data"
chown postfix "$dir/postfix/data"

# A CA and a leaf: rustls refuses a self-signed certificate used as its own CA.
tls=$dir/tls
if [ ! -f "$tls/server.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Switchboard Test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/leaf.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 2 -extfile "$tls/leaf.ext" -out "$tls/server.crt" 2>/dev/null
    chmod 644 "$tls/server.key"
fi

# --- Dovecot -------------------------------------------------------------
mail_uid=$(id -u nobody) mail_gid=$(id -g nobody)
chown "$mail_uid:$mail_gid" "$dir/mail"
: >"$dir/dovecot/users"
for u in "${users[@]}"; do
    echo "$u:{PLAIN}secret::::::" >>"$dir/dovecot/users"
done
cat >"$dir/dovecot/dovecot.conf" <<EOF
base_dir = $dir/dovecot/run
state_dir = $dir/dovecot/state
instance_name = switchboard-test-$imap_port
log_path = $dir/dovecot/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 1
last_valid_uid = 0
first_valid_gid = 1
mail_location = maildir:$dir/mail/%u
mail_uid = $mail_uid
mail_gid = $mail_gid
disable_plaintext_auth = no
auth_mechanisms = plain login
ssl = yes
ssl_cert = <$tls/server.crt
ssl_key = <$tls/server.key
ssl_min_protocol = TLSv1.2
stats_writer_socket_path =
imap_idle_notify_interval = 2 mins
lmtp_save_to_detail_mailbox = no
recipient_delimiter = +
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/dovecot/users
}
userdb {
  driver = static
  args = uid=$mail_uid gid=$mail_gid home=$dir/mail/%u
}
service imap-login {
  chroot =
  inet_listener imap {
    address = 127.0.0.1
    port = $imap_port
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $imaps_port
    ssl = yes
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp_port
  }
  unix_listener lmtp {
    mode = 0600
  }
}
service anvil {
  chroot =
}
service auth {
  unix_listener auth-userdb {
    mode = 0600
  }
}
protocol lmtp {
  auth_username_format = %u
}
EOF
dovecot -c "$dir/dovecot/dovecot.conf" </dev/null >"$dir/dovecot/stdout.log" 2>&1 \
    || die "dovecot failed to start: $(cat "$dir/dovecot/stdout.log" "$dir/dovecot/dovecot.log" 2>/dev/null)"

# --- Postfix -------------------------------------------------------------
pf=$dir/postfix
: >"$pf/vmailbox"
for u in "${users[@]}"; do
    echo "$u OK" >>"$pf/vmailbox"
done
cat >"$pf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
myorigin = example.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = example.test, customer.test
virtual_mailbox_maps = texthash:$pf/vmailbox
virtual_transport = lmtp:inet:127.0.0.1:$lmtp_port
local_transport = error:no local delivery in tests
relayhost =
default_transport = error:no outside delivery in tests
message_size_limit = 52428800
biff = no
append_dot_mydomain = no
smtputf8_enable = yes
smtpd_tls_security_level = may
smtpd_tls_cert_file = $tls/server.crt
smtpd_tls_key_file = $tls/server.key
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
alias_maps =
alias_database =
smtpd_banner = \$myhostname ESMTP
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
lmtp_connection_cache_on_demand = yes
in_flow_delay = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
EOF
awk -v port="$smtp_port" '
    /^#/ || /^[ \t]/ || NF < 8 { print; next }
    $1 == "smtp" && $2 == "inet" { $1 = "127.0.0.1:" port }
    { $5 = "n"; print }
' /etc/postfix/master.cf >"$pf/master.cf"
# A config written moments before start makes Postfix stall ~2 s: backdate.
touch -d '-1 minute' "$pf/main.cf" "$pf/master.cf" "$pf/vmailbox"
postfix -c "$pf" start >"$pf/start.log" 2>&1 \
    || die "postfix failed to start: $(cat "$pf/start.log" "$pf/maillog" 2>/dev/null)"

# Ready when both answer on their ports (bounded).
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$imap_port") 2>/dev/null; then
        exit 0
    fi
    sleep 0.05
done
stop "$dir"
die "mail servers did not come up within 5 s; see $dir/dovecot/dovecot.log and $pf/maillog"

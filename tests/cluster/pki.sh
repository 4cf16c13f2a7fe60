# Sourced by up.sh and node.sh: the cluster's certificates and kubeconfigs, made one way.
# Callers set `pki` (the directory holding the CA) and `server` (the API server's URL).

cert() { # NAME SUBJECT [SAN]: a key and a certificate signed by the CA
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$1.key" -subj "$2" -out "$pki/$1.csr" 2>/dev/null
  local ext=$pki/$1.ext
  echo "basicConstraints=CA:FALSE" > "$ext"
  [[ -n ${3:-} ]] && echo "subjectAltName=$3" >> "$ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$ext" -out "$pki/$1.crt" 2>/dev/null
}

kubeconfig() { # FILE USER: a kubeconfig authenticating as USER's certificate
  cat > "$1" <<EOC
apiVersion: v1
kind: Config
clusters:
- name: tollgate-test
  cluster: { server: "$server", certificate-authority: "$pki/ca.crt" }
users:
- name: $2
  user: { client-certificate: "$pki/$2.crt", client-key: "$pki/$2.key" }
contexts:
- name: tollgate-test
  context: { cluster: tollgate-test, user: $2 }
current-context: tollgate-test
EOC
}

"""What tests share; a test module imports from here, never from another test module.

Real services: hubsim (the Hub imitation; its fixtures in hub_fixtures), registry (real
docker-registry, token server, base images; fixtures), proxy (a cutting TCP proxy),
podman, kubeplay, builder_image, sigpolicy. Data and requests: models (model_files,
make_model, build_args), build_requests (request_for, token_file). Running and checking:
clitools (the CLI in-process), imagecheck (skopeo/umoci), features (machine probes),
procwatch (/proc watchers). Plumbing: ports, waiting (the one wait_until), fixtures (ws)."""

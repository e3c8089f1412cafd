using Crest.Core;
using Crest.Runtime;
using Tomlyn;
using Tomlyn.Model;
using Tomlyn.Serialization;

namespace Crest.Daemon.Config;

/// <summary>Command-line values that override config.toml; null means "not given".</summary>
public sealed record ConfigOverrides(string? ConfigFile = null, string? Root = null, string? State = null, string? Socket = null, string? LogLevel = null, string? LogFormat = null);

/// <summary>
/// Reads config.toml strictly: an unknown table or key, or a value of the wrong type, is an error that
/// names the file, the key and what was expected, so a typo never silently falls back to a default.
/// </summary>
public static class ConfigLoader
{
    public static CrestConfig Load(ConfigOverrides overrides)
    {
        ArgumentNullException.ThrowIfNull(overrides);
        var path = overrides.ConfigFile ?? CrestPaths.DefaultConfig;
        CrestConfig config;
        if (File.Exists(path))
        {
            string text;
            try
            {
                text = File.ReadAllText(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"config file {path} cannot be read: {e.Message}", e);
            }

            config = Parse(text, path);
        }
        else if (overrides.ConfigFile is not null)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"config file {path} does not exist; create it or leave out --config to use the defaults");
        }
        else
        {
            config = new CrestConfig();
        }

        return ApplyOverrides(config, overrides);
    }

    public static CrestConfig ApplyOverrides(CrestConfig config, ConfigOverrides o)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(o);
        var paths = config.Paths;
        var state = o.State ?? paths.State;
        // A socket left at its default follows an overridden state directory.
        var socket = o.Socket ?? (o.State is not null && paths.Socket == CrestPaths.DefaultSocket ? Path.Combine(state, "crest.sock") : paths.Socket);
        var result = config with
        {
            Paths = new CrestPaths(Absolute(o.Root ?? paths.Root, "root"), Absolute(state, "state"), Absolute(socket, "socket")),
            Log = config.Log with
            {
                Level = o.LogLevel is null ? config.Log.Level : ParseLevel(o.LogLevel, "--log-level"),
                Format = o.LogFormat is null ? config.Log.Format : ParseFormat(o.LogFormat, "--log-format"),
            },
        };
        // sun_path holds 108 bytes including the terminating NUL.
        if (System.Text.Encoding.UTF8.GetByteCount(result.Paths.Socket) > 107)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"socket path {result.Paths.Socket} is longer than the 107 bytes a unix socket address holds; choose a shorter --socket or --state");
        }

        return result;
    }

    public static CrestConfig Parse(string text, string sourceName)
    {
        TomlTable doc;
        try
        {
            doc = TomlSerializer.Deserialize(text, ConfigToml.Default.TomlTable) ?? new TomlTable();
        }
        catch (TomlException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"config file {sourceName} is not valid TOML: {e.Message}", e);
        }

        var reader = new TableReader(doc, "", sourceName);
        var defaults = new CrestConfig();
        var config = defaults with { SourceFile = sourceName };

        reader.Table("paths", t =>
        {
            config = config with
            {
                Paths = new CrestPaths(
                    Absolute(t.String("root") ?? defaults.Paths.Root, "paths.root"),
                    Absolute(t.String("state") ?? defaults.Paths.State, "paths.state"),
                    Absolute(t.String("socket") ?? defaults.Paths.Socket, "paths.socket")),
            };
        });
        reader.Table("log", t =>
        {
            var level = t.String("level");
            var format = t.String("format");
            config = config with
            {
                Log = new LogConfig(
                    level is null ? defaults.Log.Level : ParseLevel(level, $"{sourceName}: log.level"),
                    format is null ? defaults.Log.Format : ParseFormat(format, $"{sourceName}: log.format")),
            };
        });
        reader.Table("runtime", t =>
        {
            var handlers = defaults.Runtime.Handlers;
            t.Table("handlers", h =>
            {
                handlers = h.Keys().Select(name =>
                {
                    RuntimeHandlerOptions? handler = null;
                    h.Table(name, one => handler = new RuntimeHandlerOptions(name, one.String("path") ?? name));
                    return handler!;
                }).ToList();
            });
            var driver = t.String("cgroup_driver");
            config = config with
            {
                Runtime = new RuntimeOptions(
                    t.String("default_handler") ?? defaults.Runtime.DefaultHandler,
                    handlers,
                    driver switch
                    {
                        null or "cgroupfs" => CgroupDriver.Cgroupfs,
                        // runc's systemd driver needs systemd as PID 1 and slice-form cgroup paths; Crest does not build those yet.
                        "systemd" => throw new CrestException(ErrorKind.InvalidArgument,
                            $"config file {sourceName}: runtime.cgroup_driver = \"systemd\" is not supported yet; use \"cgroupfs\" (the kubelet's cgroupDriver must match)"),
                        _ => throw Invalid(sourceName, "runtime.cgroup_driver", "\"cgroupfs\" or \"systemd\"", driver),
                    },
                    t.String("conmon_path") ?? defaults.Runtime.ConmonPath),
            };
            if (config.Runtime.Handlers.All(h => h.Name != config.Runtime.DefaultHandler))
            {
                throw Invalid(sourceName, "runtime.default_handler", $"one of the handlers ({string.Join(", ", config.Runtime.Handlers.Select(h => h.Name))})", config.Runtime.DefaultHandler);
            }
        });
        reader.Table("cni", t =>
        {
            config = config with
            {
                Cni = new CniOptions(t.Directory("conf_dir") ?? defaults.Cni.ConfDir, AbsoluteDirs(t.Strings("plugin_dirs"), sourceName) ?? defaults.Cni.PluginDirs),
            };
        });
        reader.Table("checkpoint", t =>
        {
            var min = t.String("min_criu_version");
            config = config with
            {
                Checkpoint = new CheckpointConfig(
                    t.Bool("enabled") ?? defaults.Checkpoint.Enabled,
                    t.String("criu_path") ?? defaults.Checkpoint.CriuPath,
                    min is null ? defaults.Checkpoint.MinimumCriuVersion : ParseCriuVersion(min, sourceName))
                {
                    TcpEstablished = t.Bool("tcp_established") ?? defaults.Checkpoint.TcpEstablished,
                    TimeoutSeconds = t.Long("timeout_seconds") ?? defaults.Checkpoint.TimeoutSeconds,
                    Compression = t.String("compression") is { } c
                        ? (c is "none" or "gzip" or "zstd" ? c : throw Invalid(sourceName, "checkpoint.compression", "one of \"none\", \"gzip\", \"zstd\"", c))
                        : defaults.Checkpoint.Compression,
                    WorkInMemory = t.String("work_in_memory") is { } w
                        ? (w is "auto" or "tmpfs" or "never" ? w : throw Invalid(sourceName, "checkpoint.work_in_memory", "one of \"auto\", \"tmpfs\", \"never\"", w))
                        : defaults.Checkpoint.WorkInMemory,
                    KeepCriuKernelFacts = t.Bool("keep_criu_kernel_facts") ?? defaults.Checkpoint.KeepCriuKernelFacts,
                },
            };
        });
        reader.Table("restore", t =>
        {
            var d = defaults.Restore;
            config = config with
            {
                Restore = new RestoreConfig(t.Bool("via_create") ?? d.ViaCreate)
                {
                    TcpEstablished = t.Bool("tcp_established") ?? d.TcpEstablished,
                    PagesInPlace = t.Bool("pages_in_place") ?? d.PagesInPlace,
                    PagesInPlaceMinBytes = t.Integer("pages_in_place_min_bytes") is { } least
                        ? least >= 0 ? least : throw Invalid(sourceName, "restore.pages_in_place_min_bytes", "a number of bytes, 0 or more", least)
                        : d.PagesInPlaceMinBytes,
                    Limits = new Checkpoint.Format.RestoreLimits
                    {
                        MaxArchiveBytes = t.Long("max_archive_bytes") ?? d.Limits.MaxArchiveBytes,
                        MaxArchiveEntries = t.Long("max_archive_entries") ?? d.Limits.MaxArchiveEntries,
                        MaxRootfsDiffBytes = t.Long("max_rootfs_diff_bytes") ?? d.Limits.MaxRootfsDiffBytes,
                        MaxRootfsDiffEntries = t.Long("max_rootfs_diff_entries") ?? d.Limits.MaxRootfsDiffEntries,
                        MaxMetadataBytes = (int)Math.Min(int.MaxValue, t.Long("max_metadata_bytes") ?? d.Limits.MaxMetadataBytes),
                        MaxExpansionRatio = t.Integer("max_expansion_ratio") is { } ratio
                            ? ratio >= 0 ? ratio : throw Invalid(sourceName, "restore.max_expansion_ratio", "0 (no check) or a positive integer", ratio)
                            : d.Limits.MaxExpansionRatio,
                        DiskReserveBytes = t.Integer("disk_reserve_bytes") is { } reserve
                            ? reserve >= 0 ? reserve : throw Invalid(sourceName, "restore.disk_reserve_bytes", "a number of bytes, 0 or more", reserve)
                            : d.Limits.DiskReserveBytes,
                    },
                    RelaxedChecks = (t.Strings("relaxed_checks") ?? [.. d.RelaxedChecks]).Select(c => Checkpoint.Format.RestorePolicy.Checks.Contains(c)
                        ? c
                        : throw Invalid(sourceName, "restore.relaxed_checks", $"a list of checks from {string.Join(", ", Checkpoint.Format.RestorePolicy.Checks)}", c)).ToList(),
                },
            };
        });
        reader.Table("images", t =>
        {
            var d = defaults.Images;
            config = config with
            {
                Images = d with
                {
                    MaxExpansionRatio = t.Integer("max_expansion_ratio") is { } ratio
                        ? ratio >= 0 ? ratio : throw Invalid(sourceName, "images.max_expansion_ratio", "0 (no check) or a positive integer", ratio)
                        : d.MaxExpansionRatio,
                    DiskReserveBytes = t.Integer("disk_reserve_bytes") is { } reserve
                        ? reserve >= 0 ? reserve : throw Invalid(sourceName, "images.disk_reserve_bytes", "a number of bytes, 0 or more", reserve)
                        : d.DiskReserveBytes,
                },
            };
        });
        reader.Table("streaming", t =>
        {
            var address = t.String("address") ?? defaults.Streaming.Address;
            if (!System.Net.IPAddress.TryParse(address, out _))
            {
                throw Invalid(sourceName, "streaming.address", "an IP address such as \"127.0.0.1\" (a name is not resolved)", address);
            }

            var port = t.Integer("port") ?? defaults.Streaming.Port;
            config = config with
            {
                Streaming = new Streaming.StreamingConfig(address, port is >= 0 and <= 65535 ? (int)port : throw Invalid(sourceName, "streaming.port", "a TCP port from 0 (any free port) to 65535", port)),
            };
        });
        reader.Table("metrics", t =>
        {
            var address = t.StringOrEmpty("address") ?? defaults.Metrics.Address;
            if (address.Length > 0 && !(System.Net.IPEndPoint.TryParse(address, out var endpoint) && endpoint.Port > 0))
            {
                throw Invalid(sourceName, "metrics.address", "an IP address and port such as \"127.0.0.1:1338\", or \"\" for no metrics endpoint", address);
            }

            config = config with { Metrics = new MetricsConfig(address) };
        });
        reader.Table("registries", t =>
        {
            var hosts = new Dictionary<string, Crest.Images.RegistryHostOptions>(StringComparer.Ordinal);
            foreach (var host in t.Keys().ToList())
            {
                t.Table(host, h =>
                {
                    var mirrors = (h.Strings("mirrors") ?? []).Select(m =>
                        Uri.TryCreate(m, UriKind.Absolute, out var u) && u.Scheme is "http" or "https"
                            ? u
                            : throw Invalid(sourceName, $"registries.\"{host}\".mirrors", "a list of http:// or https:// URLs", m)).ToList();
                    hosts[host] = new Crest.Images.RegistryHostOptions
                    {
                        PlainHttp = h.Bool("plain_http") ?? false,
                        Username = h.String("username"),
                        Password = h.String("password"),
                        Mirrors = mirrors,
                    };
                });
            }

            config = config with { Registries = new Crest.Images.RegistryOptions(hosts) };
        });
        reader.RejectUnknown();
        return config;
    }

    private static List<string>? AbsoluteDirs(List<string>? dirs, string sourceName) =>
        dirs?.Select(d => Path.IsPathRooted(d) ? d : throw Invalid(sourceName, "cni.plugin_dirs", "a list of absolute paths", d)).ToList();

    private static int ParseCriuVersion(string text, string sourceName)
    {
        var parts = text.Split('.');
        if (parts.Length is < 2 or > 3 || !parts.All(p => int.TryParse(p, out _)))
        {
            throw Invalid(sourceName, "checkpoint.min_criu_version", "a version such as \"4.2\" or \"4.2.1\"", text);
        }

        var n = parts.Select(int.Parse).ToArray();
        return Checkpoint.CriuVersion.Number(n[0], n[1], n.Length > 2 ? n[2] : 0, gitBuild: false);
    }

    private static string ParseLevel(string level, string where) => level.ToLowerInvariant() switch
    {
        "trace" or "debug" or "information" or "warning" or "error" or "critical" or "none" => level.ToLowerInvariant(),
        "info" => "information",
        "warn" => "warning",
        _ => throw new CrestException(ErrorKind.InvalidArgument, $"{where}: expected one of trace, debug, info, warn, error, critical, none; got \"{level}\""),
    };

    private static LogFormat ParseFormat(string format, string where) => format.ToLowerInvariant() switch
    {
        "text" => LogFormat.Text,
        "json" => LogFormat.Json,
        _ => throw new CrestException(ErrorKind.InvalidArgument, $"{where}: expected \"text\" or \"json\"; got \"{format}\""),
    };

    private static string Absolute(string path, string what) => Path.IsPathRooted(path)
        ? Path.GetFullPath(path)
        : throw new CrestException(ErrorKind.InvalidArgument, $"{what} must be an absolute path; got \"{path}\"");

    private static CrestException Invalid(string source, string key, string expected, object? found) =>
        new(ErrorKind.InvalidArgument, $"config file {source}: {key} must be {expected}; found {Describe(found)}");

    private static string Describe(object? value) => value switch
    {
        null => "nothing",
        string s => $"\"{s}\"",
        TomlTable => "a table",
        TomlArray => "an array",
        bool b => b ? "true" : "false",
        _ => value.ToString() ?? "?",
    };

    /// <summary>Walks one TOML table, remembering which keys were read so the rest can be rejected.</summary>
    private sealed class TableReader(TomlTable table, string prefix, string source)
    {
        private readonly HashSet<string> _seen = new(StringComparer.Ordinal);
        private readonly List<TableReader> _children = [];

        public IEnumerable<string> Keys() => table.Keys;

        /// <summary>A string that may be empty where "" has a meaning of its own (a feature left off).</summary>
        public string? StringOrEmpty(string key) => Get<string>(key, "a string");

        public string? String(string key)
        {
            var value = Get<string>(key, "a string");
            return value is not null && value.Trim().Length == 0 ? throw Invalid(source, Name(key), "a non-empty string", value) : value;
        }

        /// <summary>A directory, which must be absolute: crestd's working directory must not change what it reads.</summary>
        public string? Directory(string key)
        {
            var value = String(key);
            return value is not null && !Path.IsPathRooted(value) ? throw Invalid(source, Name(key), "an absolute path", value) : value;
        }

        public bool? Bool(string key) => Get<bool?>(key, "true or false");

        /// <summary>A positive integer.</summary>
        public long? Long(string key)
        {
            var value = Get<long?>(key, "an integer");
            return value is <= 0 ? throw Invalid(source, Name(key), "a positive integer", value) : value;
        }

        /// <summary>Any integer (range checks are the caller's).</summary>
        public long? Integer(string key) => Get<long?>(key, "an integer");

        public List<string>? Strings(string key)
        {
            var array = Get<TomlArray>(key, "an array of strings");
            if (array is null)
            {
                return null;
            }

            return array.Select(v => v is string { Length: > 0 } text ? text : throw Invalid(source, Name(key), "an array of non-empty strings", v)).ToList();
        }

        public void Table(string key, Action<TableReader> read)
        {
            var sub = Get<TomlTable>(key, "a table");
            if (sub is null)
            {
                return;
            }

            var child = new TableReader(sub, Name(key), source);
            _children.Add(child);
            read(child);
        }

        public void RejectUnknown()
        {
            var unknown = table.Keys.Where(k => !_seen.Contains(k)).ToList();
            if (unknown.Count > 0)
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"config file {source}: unknown key{(unknown.Count > 1 ? "s" : "")} {string.Join(", ", unknown.Select(Name))}; see docs/config.md for the keys crestd reads");
            }

            foreach (var c in _children)
            {
                c.RejectUnknown();
            }
        }

        private string Name(string key) => prefix.Length == 0 ? key : $"{prefix}.{key}";

        private T? Get<T>(string key, string expected)
        {
            _seen.Add(key);
            if (!table.TryGetValue(key, out var value))
            {
                return default;
            }

            return value is T typed ? typed : throw Invalid(source, Name(key), expected, value);
        }
    }
}

/// <summary>
/// config.toml is read as an untyped table and walked by hand (<see cref="ConfigLoader"/>); the table's reader is
/// generated at build time because crestd is a Native AOT binary, which has no reflection-based TOML binding.
/// </summary>
[TomlSerializable(typeof(TomlTable))]
internal sealed partial class ConfigToml : TomlSerializerContext;

using System.Text.Json;

namespace Crest.Runtime;

/// <summary>The network the node would give pods, or why it cannot.</summary>
public sealed record CniNetworkInfo(string? ConfigFile, string? NetworkName, IReadOnlyList<string> PluginTypes, string? Problem)
{
    public bool Usable => Problem is null;
}

/// <summary>
/// Checks what NetworkReady needs: a CNI network configuration (the first .conflist/.conf/.json in
/// lexical order, as CNI's libcni and the kubelet pick it) and an executable for every plugin it names.
/// </summary>
public static class CniConfigProbe
{
    private static readonly string[] ConfigExtensions = [".conflist", ".conf", ".json"];

    public static CniNetworkInfo Probe(CniOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!Directory.Exists(options.ConfDir))
        {
            return Problem(null, $"no CNI configuration: directory {options.ConfDir} does not exist; run make deps to install the default pod network or set [cni] conf_dir");
        }

        var files = Directory.EnumerateFiles(options.ConfDir)
            .Where(f => ConfigExtensions.Contains(Path.GetExtension(f), StringComparer.Ordinal))
            .Order(StringComparer.Ordinal)
            .ToList();
        if (files.Count == 0)
        {
            return Problem(null, $"no CNI configuration: {options.ConfDir} has no .conflist, .conf or .json file; run make deps to install the default pod network");
        }

        var errors = new List<string>();
        foreach (var file in files)
        {
            var parsed = Parse(file);
            if (parsed.Problem is null)
            {
                var missing = parsed.PluginTypes.Where(t => FindPlugin(t, options.PluginDirs) is null).ToList();
                if (missing.Count == 0)
                {
                    return parsed;
                }

                return parsed with
                {
                    Problem = $"CNI network '{parsed.NetworkName}' in {file} needs plugins {string.Join(", ", missing)}, which are not in {string.Join(":", options.PluginDirs)}; install containernetworking-plugins (make deps) or set [cni] plugin_dirs",
                };
            }

            errors.Add(parsed.Problem);
        }

        return Problem(null, $"no usable CNI configuration in {options.ConfDir}: {string.Join("; ", errors)}");
    }

    private static string? FindPlugin(string type, IReadOnlyList<string> pluginDirs) =>
        pluginDirs.Select(d => Path.Combine(d, type)).FirstOrDefault(File.Exists);

    private static CniNetworkInfo Parse(string file)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(file));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                return Problem(file, $"{file} is not a JSON object");
            }

            var name = root.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString() : null;
            if (string.IsNullOrEmpty(name))
            {
                return Problem(file, $"{file} has no network name");
            }

            var types = new List<string>();
            if (root.TryGetProperty("plugins", out var plugins))
            {
                if (plugins.ValueKind != JsonValueKind.Array || plugins.GetArrayLength() == 0)
                {
                    return Problem(file, $"{file} has an empty or malformed plugins list");
                }

                foreach (var p in plugins.EnumerateArray())
                {
                    if (p.ValueKind != JsonValueKind.Object || !p.TryGetProperty("type", out var t) || t.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(t.GetString()))
                    {
                        return Problem(file, $"{file} has a plugin without a type");
                    }

                    types.Add(t.GetString()!);
                }
            }
            else if (root.TryGetProperty("type", out var single) && single.ValueKind == JsonValueKind.String)
            {
                types.Add(single.GetString()!);
            }
            else
            {
                return Problem(file, $"{file} names no plugin type");
            }

            return new CniNetworkInfo(file, name, types, null);
        }
        catch (JsonException e)
        {
            return Problem(file, $"{file} is not valid JSON: {e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Problem(file, $"{file} cannot be read: {e.Message}");
        }
    }

    private static CniNetworkInfo Problem(string? file, string message) => new(file, null, [], message);
}
